from seamless_systemd.cli import main

raise SystemExit(main())
