"""Helpers shared by the benchmark scripts: machine description, side-by-side timing, table printing."""

import os
import platform
import statistics
import time

import torch


def describe_machine(device):
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_side_by_side(functions, repeats, device, warmup=1):
    """
    Runs the named callables in turn, `repeats` rounds (A, B, A, B, ...), so that drift of the machine hits all of
    them alike; returns the median seconds of each.
    """
    for _ in range(warmup):
        for function in functions.values():
            function()
            synchronize(device)
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def print_table(headers, rows):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    line = " | ".join(str(cell).ljust(width) for cell, width in zip(headers, widths))
    print(line)
    print("-|-".join("-" * width for width in widths))
    for row in rows:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
