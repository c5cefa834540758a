#!/bin/sh
# dracut pre-udev hook (sourced by dracut): see /usr/lib/seamless-systemd/initrd/seamless-pid-base.
/bin/sh /usr/lib/seamless-systemd/initrd/seamless-pid-base dracut
