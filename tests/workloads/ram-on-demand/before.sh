#!/bin/sh
exec python3 ./check.py save
