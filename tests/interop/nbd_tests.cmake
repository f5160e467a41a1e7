# `blkstack serve`'s NBD export against real clients (libnbd, QEMU, the
# kernel), and the nbd driver against real servers (nbd_driver). Each script takes the build directory, needs root, and installs
# what it misses with apt-get. Run them with:
#   ctest --test-dir build -L interop --output-on-failure
set(nbd_interop_tests
  nbd_clients
  nbd_commands
  nbd_qemu
  nbd_tls
  nbd_bad_input
  nbd_driver
)
foreach(t IN LISTS nbd_interop_tests)
  add_test(NAME interop_${t} COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/${t}.sh ${PROJECT_BINARY_DIR})
  set_tests_properties(interop_${t} PROPERTIES
    LABELS interop
    TIMEOUT 600
    # Daemons, thousands of sockets and timing-sensitive checks: one at a time.
    RUN_SERIAL TRUE)
endforeach()
