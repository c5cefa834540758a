#!/bin/bash
# dracut module of seamless-systemd: the same two steps as the initramfs-tools
# hook, from the same scripts (/usr/lib/seamless-systemd/initrd/):
#   pre-udev:  the PID base, and on a restore boot the PID floor;
#   pre-pivot: on a restore boot, mount the PMEM images at /run/seamless/pmem
#              (/run moves into the real root with it).

# Always included: on an ordinary boot the scripts only note the PID base.
check() {
    return 0
}

depends() {
    return 0
}

installkernel() {
    hostonly='' instmods libnvdimm nd_e820 nd_pmem ext4 dm_mod
}

install() {
    inst_multiple cat grep mkdir chmod mount modprobe sleep dmsetup
    inst_simple /usr/lib/seamless-systemd/initrd/seamless-pid-base
    inst_simple /usr/lib/seamless-systemd/initrd/seamless-mount-images
    # shellcheck disable=SC2154 # moddir is set by dracut
    inst_hook pre-udev 00 "$moddir/seamless-pid-base.sh"
    inst_hook pre-pivot 50 "$moddir/seamless-mount-images.sh"
}
