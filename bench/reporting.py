"""Shared by the benchmark modules: print a finished summary table, and save it when asked."""
import os


def report_table(request, lines: list[str]) -> None:
    """Write ``lines`` to pytest's terminal and, if $DPFAST_BENCH_TABLE names a file, append them to it."""
    writer = request.config.pluginmanager.get_plugin("terminalreporter")
    if writer is not None:
        writer.write_line("")
        for line in lines:
            writer.write_line(line)
    output = os.environ.get("DPFAST_BENCH_TABLE")
    if output:
        with open(output, "a") as handle:  # appended: several modules may report in one run
            handle.write("\n".join(lines) + "\n")
