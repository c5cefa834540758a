# seamless-systemd — see README.md.
PYTHON ?= python3
export PYTHON

.PHONY: all demo test unit lint deps clean rpm bench

all: unit

deps:
	./tests/vm/host-deps.sh

# Build the guest image, boot it under QEMU, upgrade its kernel seamlessly and
# show what happened; the report lands in build/demo/report.json.
# WORKLOAD=DIR: try your own services instead (see README).
demo: deps
	$(PYTHON) -m tests.vm.vm demo $(if $(WORKLOAD),--workload "$(WORKLOAD)")

# The benchmark (docs/benchmarks.md): client-side downtime of the kernel switch,
# the floor beside the seamless upgrade (images in a reservation, without
# pre-dump, with sha256 checksums, in RAM taken at arm time, restored lazily,
# huge pages collapsed again, images on the disk) and the cold reboot,
# interleaved repetitions; rewrites docs/benchmarks.*. Some 5 hours under TCG (90 switches).
BENCH_SIZES ?= 64,256,1024
BENCH_REPS ?= 3
bench: deps
	$(PYTHON) -m tests.vm.bench --sizes $(BENCH_SIZES) --scenarios a,b,b-nopre,b-nowarm,b-sha256,b-ram,b-lazy,b-thp,c,d --reps $(BENCH_REPS)

# Every test: unit tests, generator golden files, and the VM upgrade test.
test: deps lint
	$(PYTHON) -m pytest -v -rs --durations=12 tests

# Only what runs without root and without a VM.
unit:
	$(PYTHON) -m pytest -v -m "not integration" tests

lint:
	shellcheck -s sh packaging/debian/seamless-systemd.prerm packaging/debian/seamless-systemd.postrm initramfs-tools/hooks/seamless initramfs-tools/scripts/*/seamless initrd/* dracut/90seamless/*.sh libexec/criu-action kernel-hooks/* tests/vm/host-deps.sh packaging/rpm/build.sh .ci/run
	shellcheck -s bash dracut/90seamless/module-setup.sh packaging/files/bash-completion/seamless-upgrade
	$(PYTHON) -m ruff format --check seamless_systemd tests generators/seamless-generator bin/seamless-upgrade
	$(PYTHON) -m ruff check seamless_systemd tests
	$(PYTHON) -m mypy seamless_systemd

# The RPM (Fedora/RHEL: dracut), from the files git knows, into build/rpm/RPMS.
rpm: deps
	packaging/rpm/build.sh build/rpm

clean:
	rm -rf build
