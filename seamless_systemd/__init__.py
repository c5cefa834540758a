"""seamless-systemd: upgrade the kernel with kexec, keep the services' running state."""

__version__ = "0.1.0"
