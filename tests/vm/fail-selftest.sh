#!/bin/bash
# Exits 3 on purpose: run-in-vm.sh must return exactly that status
# (host-selftest.sh exit-status checks it).
echo "failing on purpose with status 3"
exit 3
