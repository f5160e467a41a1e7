#!/bin/bash
# Panics the kernel on purpose: run-in-vm.sh must notice that the script
# never finished and return 125 at once (host-selftest.sh crash checks it).
echo "crashing the kernel on purpose"
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
sleep 60
echo "still alive after a panic?"
exit 0
