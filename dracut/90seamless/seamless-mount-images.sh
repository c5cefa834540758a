#!/bin/sh
# dracut pre-pivot hook (sourced by dracut): see /usr/lib/seamless-systemd/initrd/seamless-mount-images.
/bin/sh /usr/lib/seamless-systemd/initrd/seamless-mount-images dracut "${NEWROOT:-/sysroot}"
