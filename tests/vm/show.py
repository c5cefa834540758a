"""Print the scenario events of console logs, debug output in full: python3 -m tests.vm.show LOG…"""

import json
import sys
from pathlib import Path

for path in sys.argv[1:]:
    for line in Path(path).read_text(errors="replace").splitlines():
        i = line.find("SEAMLESS-TEST ")
        if i < 0:
            continue
        _, name, payload = line[i:].rstrip().split(" ", 2)
        try:
            data = json.loads(payload)
        except ValueError:
            print(name, payload)
            continue
        if name == "debug":
            print(f"== debug: {' '.join(data['cmd'])}\n{data['out']}")
        else:
            print(f"== {name}\n{json.dumps(data, indent=1)}")
