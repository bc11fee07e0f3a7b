"""A rank of ``python -m scratchnet.train`` whose K-th training step raises (a fault test).

``python tests/failing_rank.py K TIME_FILE TRAIN_FLAGS...``, started as one rank of an MPMD mpiexec job;
the wall-clock time of the fault goes to TIME_FILE.
"""

import sys
import time

from scratchnet import train


def main():
    fail_at, time_file, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    steps = [0]
    take_step = train.train_step

    def failing_step(*args, **kwargs):
        steps[0] += 1
        if steps[0] == fail_at:
            with open(time_file, "w") as file:
                file.write(repr(time.time()))
            raise RuntimeError(f"injected fault at step {fail_at}")
        return take_step(*args, **kwargs)

    train.train_step = failing_step  # fit looks the step up when it starts
    return train.main(flags)


if __name__ == "__main__":
    sys.exit(main())
