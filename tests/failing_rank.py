"""A rank of ``python -m scratchnet.train`` whose K-th optimizer step raises (a fault test).

``python tests/failing_rank.py K TIME_FILE TRAIN_FLAGS...``, started as one rank of an MPMD mpiexec job;
the wall-clock time of the fault goes to TIME_FILE.
"""

import sys
import time

from scratchnet import train
from scratchnet.optim import SGD


def main():
    fail_at, time_file, flags = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    steps = [0]
    take_step = SGD.step

    def failing_step(self):
        steps[0] += 1
        if steps[0] == fail_at:
            with open(time_file, "w") as file:
                file.write(repr(time.time()))
            raise RuntimeError(f"injected fault at step {fail_at}")
        return take_step(self)

    SGD.step = failing_step
    return train.main(flags)


if __name__ == "__main__":
    sys.exit(main())
