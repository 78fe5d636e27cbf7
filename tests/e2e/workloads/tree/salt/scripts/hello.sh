#!/bin/sh
echo "hello from the master, args: $*"
