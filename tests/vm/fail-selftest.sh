#!/bin/bash
# Exits 3: run-in-vm.sh must pass that on.
echo "failing on purpose"
exit 3
