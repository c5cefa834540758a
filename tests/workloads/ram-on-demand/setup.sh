#!/bin/sh
# Nothing to install: keeper.py is plain Python.
exit 0
