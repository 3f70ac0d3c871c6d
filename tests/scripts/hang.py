"""A job whose two processes never finish: the harness must kill both and fail fast."""

import multiprocessing
import time


def sleep_forever() -> None:
    time.sleep(3600)


if __name__ == "__main__":
    child = multiprocessing.Process(target=sleep_forever)
    child.start()
    sleep_forever()
