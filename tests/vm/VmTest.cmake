# blkstack_add_vm_test: a ctest test that runs a script inside the VM lab
# (tests/vm/README.md). Include this file, then:
#
#   blkstack_add_vm_test(NAME vm_ublk_basic
#     SCRIPT ${CMAKE_CURRENT_SOURCE_DIR}/ublk_basic.sh
#     VM_ARGS --new-disk 256M:nvme --append nvme.poll_queues=2
#     ARGS --some-script-arg
#     LABELS ublk
#     TIMEOUT 300)
#
# The script runs as root in the VM, in the build directory, with
# BLKSTACK_BUILD_DIR and BLKSTACK_SOURCE_DIR set; it is labelled vm, runs
# serially, and depends on the vm_lab_setup fixture (which downloads the
# kernel and builds the initramfs on first use).
set(BLKSTACK_RUN_IN_VM ${CMAKE_CURRENT_LIST_DIR}/run-in-vm.sh)

function(blkstack_add_vm_test)
  cmake_parse_arguments(VT "" "NAME;SCRIPT;TIMEOUT" "VM_ARGS;ARGS;LABELS" ${ARGN})
  if(NOT VT_NAME OR NOT VT_SCRIPT)
    message(FATAL_ERROR "blkstack_add_vm_test needs NAME and SCRIPT")
  endif()
  if(NOT VT_TIMEOUT)
    set(VT_TIMEOUT 600)
  endif()
  # ctest's own limit comes after run-in-vm.sh's, which kills QEMU itself.
  math(EXPR ctest_timeout "${VT_TIMEOUT} + 60")
  add_test(NAME ${VT_NAME}
    COMMAND ${BLKSTACK_RUN_IN_VM} --timeout ${VT_TIMEOUT}
            --env BLKSTACK_BUILD_DIR=${PROJECT_BINARY_DIR}
            --env BLKSTACK_SOURCE_DIR=${PROJECT_SOURCE_DIR}
            ${VT_VM_ARGS} ${VT_SCRIPT} ${VT_ARGS}
    WORKING_DIRECTORY ${PROJECT_BINARY_DIR})
  set(labels vm ${VT_LABELS})
  set_tests_properties(${VT_NAME} PROPERTIES
    LABELS "${labels}"
    TIMEOUT ${ctest_timeout}
    RUN_SERIAL TRUE
    FIXTURES_REQUIRED vm_lab)
endfunction()
