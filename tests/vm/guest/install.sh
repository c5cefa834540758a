#!/bin/sh
# Runs inside the image (chroot) at build time.
set -e
cd /usr/local/lib/seamless-test
cp seamless-*.service seamless-*.socket /etc/systemd/system/
# Only for an image booted with the flush of QEMU's code before each kexec (tests/vm/tbflush.py):
# elsewhere nothing of the test bed's runs on the shutdown path.
if [ "${SEAMLESS_QEMU_TBFLUSH:-}" = shutdown ]; then
	install -D -m 0755 kexec-pause /usr/lib/systemd/system-shutdown/seamless-test-kexec-pause
fi
SCENARIO=$(cat /etc/seamless-test/scenario)
systemctl enable seamless-test.service seamless-spoiler.service
if [ "$SCENARIO" = bench ]; then
	systemctl enable seamless-bench.service
elif [ "$SCENARIO" != workload ]; then
	systemctl enable seamless-demo@7777.service seamless-demo@7778.service seamless-demo@7779.service
fi
TYPES="seamless-exec seamless-notify seamless-forking seamless-forking-nopid seamless-oneshot seamless-prefork seamless-backend seamless-frontend seamless-sandboxed seamless-resources seamless-sysv seamless-chat seamless-sandboxed-rw seamless-dynamic seamless-sysv-private seamless-grower"
if [ "$SCENARIO" = full ]; then
	for u in $TYPES; do systemctl enable "$u.service"; done
	# Socket-activated: only the sockets are enabled; the first client starts the service.
	systemctl enable seamless-sockact.socket seamless-sockact-tcp.socket seamless-sockact-udp.socket
	# The system user seamless-resources.service runs as.
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin seamless-res
fi
if [ "$SCENARIO" = full ] || [ "$SCENARIO" = lab ]; then
	# The podman container's root: python3, its standard library, the libraries
	# ldd names, the demo service. The driver imports it in the guest ('podman
	# import' cannot remount in this chroot).
	C=/tmp/ctr-root
	rm -rf "$C" && mkdir -p "$C/etc" "$C/proc" "$C/sys" "$C/dev" "$C/tmp" "$C/run" "$C/var/tmp" "$C/app"
	py=$(readlink -f /usr/bin/python3)
	for f in "$py" $(ldd "$py" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
		mkdir -p "$C$(dirname "$f")" && cp -L "$f" "$C$f"
	done
	mkdir -p "$C/usr/lib" && cp -a /usr/lib/python3.11 "$C/usr/lib/"
	ln -s "$py" "$C/usr/bin/python3"
	for l in bin lib lib64 sbin; do [ -e "$C/$l" ] || ln -s "usr/$l" "$C/$l"; done
	cp /etc/passwd /etc/group "$C/etc/"
	cp demo.py lines.py chat.py "$C/app/"
	tar -C "$C" -cf ctr-rootfs.tar . && rm -rf "$C"
fi
mkdir -p /etc/seamless/conf.d /var/lib/seamless-test
if [ "$SCENARIO" = bench ]; then
	printf 'units:\n  - seamless-bench.service\n' >/etc/seamless/conf.d/50-bench.yaml
elif [ "$SCENARIO" != workload ]; then
	cp config.yaml /etc/seamless/conf.d/50-demo.yaml
fi
if [ "$SCENARIO" = full ]; then
	cp types.yaml /etc/seamless/conf.d/60-types.yaml
fi
if [ "$SCENARIO" = faults ]; then
	# CRIU killed midway through a dump and a restore; /var full in the restore boot (flag files).
	systemctl enable seamless-criu-killer.service seamless-var-filler.service
	# A fourth demo, whose images the spoiler gives another owner and mode in one upgrade.
	systemctl enable seamless-demo@7798.service
	printf 'units:\n  - seamless-demo@7798.service\n' >/etc/seamless/conf.d/55-loose.yaml
fi
if [ "$SCENARIO" = faults ] || [ "$SCENARIO" = power ]; then
	# A service writing to disk all the time: no line it fsync'ed may be lost, whatever fails.
	systemctl enable seamless-writer.service
	printf 'units:\n  - seamless-writer.service\n' >/etc/seamless/conf.d/60-writer.yaml
fi
if [ "$SCENARIO" = power ]; then
	# The unit that replaces the writer's data file at one restore.
	systemctl enable seamless-replacer.service
fi
# QEMU's user-mode network, configured statically: the host reaches the guest's
# chat service through it (a TCP client outside the VM).
mkdir -p /etc/systemd/network
printf '[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' \
	>/etc/systemd/network/50-qemu.network
systemctl enable systemd-networkd.service
# A persistent journal: the old boot's messages are read after the kexec.
mkdir -p /var/log/journal
# Not used by the tests, and it fails without real NVDIMMs to monitor.
systemctl mask ndctl-monitor.service
# Users' workloads (make demo WORKLOAD="DIR ..."), each in its own directory.
for WL in /usr/local/lib/seamless-workloads/*/; do
	[ -d "$WL" ] || continue
	WL=${WL%/}
	name=$(basename "$WL")
	if [ -f "$WL/setup.sh" ]; then
		# The base tree's package lists may be older than the mirror.
		[ -e /var/lib/seamless-test/apt-updated ] || { apt-get update -q && touch /var/lib/seamless-test/apt-updated; }
		echo "Running the setup.sh of workload $name"
		(cd "$WL" && sh ./setup.sh)
	fi
	for f in "$WL"/*.service "$WL"/*.socket "$WL"/*.timer; do
		[ -f "$f" ] || continue
		cp "$f" /etc/systemd/system/
		if grep -q '^\[Install\]' "$f"; then
			systemctl enable "$(basename "$f")"
		fi
	done
	if [ -f "$WL/config.yaml" ]; then
		cp "$WL/config.yaml" "/etc/seamless/conf.d/70-$name.yaml"
	fi
done
rm -f /var/lib/seamless-test/apt-updated
