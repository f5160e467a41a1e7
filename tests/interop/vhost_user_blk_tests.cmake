# The vhost-user-blk export of `blkstack serve` against real libblkio 1.5's
# virtio-blk-vhost-user client and a hostile front-end. Needs root.
#   ctest --test-dir build -R interop_vhost_user_blk --output-on-failure
add_test(NAME interop_vhost_user_blk COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/vhost_user_blk.sh ${PROJECT_BINARY_DIR})
set_tests_properties(interop_vhost_user_blk PROPERTIES LABELS interop TIMEOUT 600 RUN_SERIAL TRUE)
