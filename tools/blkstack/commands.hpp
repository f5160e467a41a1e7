// The blkstack command line: one binary, one subcommand per job.
#pragma once

#include <CLI/CLI.hpp>

namespace blkstack::cli {

void add_info_command(CLI::App& app);
void add_copy_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);

}  // namespace blkstack::cli
