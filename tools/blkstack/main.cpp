// blkstack: the userspace block-I/O stack's command-line tool.
#include <cstdio>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"blkstack: userspace block I/O (libblkio-compatible library, storage daemon)"};
  app.require_subcommand(1);
  blkstack::cli::add_info_command(app);
  blkstack::cli::add_copy_command(app);
  blkstack::cli::add_bench_command(app);
  blkstack::cli::add_serve_command(app);
  CLI11_PARSE(app, argc, argv);
  return 0;
}
