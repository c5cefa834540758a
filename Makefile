# seamless-systemd — see README.md.
PYTHON ?= python3
export PYTHON

.PHONY: all demo test unit lint deps clean rpm deb bench

all: unit

deps:
	./tests/vm/host-deps.sh

# Build the guest image, boot it under QEMU, upgrade its kernel seamlessly and
# show what happened; the report lands in build/demo/report.json.
# WORKLOAD=DIR: try your own services instead (see README).
demo: deps
	$(PYTHON) -m tests.vm.vm demo $(if $(WORKLOAD),--workload "$(WORKLOAD)")

# The benchmark (docs/benchmarks.md): client-side downtime of the kernel switch,
# side by side at every size: the floor (a), the seamless upgrade (b), restored
# lazily (b-lazy), images on the disk (c), the cold reboot (d); and at
# BENCH_ONOFF_SIZE each optimization's "off" beside (b) (without pre-dump, without
# the warm-up, sha256 checksums), RAM taken at arm time (b-ram), huge pages
# collapsed again (b-thp), the early writeback on and off with a service writing
# 32 MiB/s (b-write, b-write-nowb). Interleaved repetitions; rewrites docs/benchmarks.*.
# 66 switches, each to the other kernel: the 60 before b-write took 84 minutes in one
# QEMU run under TCG on two cores (2026-12-08; a 64 MiB switch about a minute, 256 MiB
# 1.3, 1 GiB 2.5).
BENCH_SIZES ?= 64,256,1024
BENCH_ONOFF_SIZE ?= 256
BENCH_REPS ?= 3
BENCH_ONOFF = b-nopre b-nowarm b-sha256 b-ram b-thp b-write b-write-nowb
empty :=
comma := ,
bench: deps
	$(PYTHON) -m tests.vm.bench --sizes $(BENCH_SIZES) --reps $(BENCH_REPS) --scenarios \
		a,b,b-lazy,c,d,$(subst $(empty) $(empty),$(comma),$(BENCH_ONOFF:%=%@$(BENCH_ONOFF_SIZE)))

# Every test: unit tests, generator golden files, and the VM upgrade test.
test: deps lint
	$(PYTHON) -m pytest -v -rs --durations=12 tests

# Only what runs without root and without a VM.
unit:
	$(PYTHON) -m pytest -v -m "not integration" tests

lint:
	shellcheck -s sh packaging/debian/seamless-systemd.prerm packaging/debian/seamless-systemd.postrm initramfs-tools/hooks/seamless initramfs-tools/scripts/*/seamless initrd/* dracut/90seamless/*.sh libexec/criu-action kernel-hooks/* tests/vm/host-deps.sh tests/vm/guest/kexec-pause packaging/rpm/build.sh .ci/run
	shellcheck -s bash dracut/90seamless/module-setup.sh packaging/files/bash-completion/seamless-upgrade
	$(PYTHON) -m ruff format --check seamless_systemd tests generators/seamless-generator bin/seamless-upgrade
	$(PYTHON) -m ruff check seamless_systemd tests
	$(PYTHON) -m mypy seamless_systemd

# The Debian package, from the files git knows and packaging/debian, into build/deb/
# (what the VM tests install): apt install ./build/deb/seamless-systemd_*_all.deb
deb: deps
	$(PYTHON) -c 'import pathlib, tests.vm.image as i; print(i.build_deb(pathlib.Path("build/deb")))'

# The RPM (Fedora/RHEL: dracut), from the files git knows, into build/rpm/RPMS.
rpm: deps
	packaging/rpm/build.sh build/rpm

clean:
	rm -rf build
