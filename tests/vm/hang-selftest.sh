#!/bin/bash
# Never finishes on its own: run-in-vm.sh --timeout must kill the VM and
# return 124 (host-selftest.sh timeout checks it).
echo "hanging on purpose"
exec sleep 3600
