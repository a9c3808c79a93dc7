"""The webui reports (and swallows) exceptions from extensions with ``errors.report``."""
reported: list = []


def report(message, exc_info=False):
    import sys

    reported.append((message, repr(sys.exc_info()[1]) if exc_info else None))


def display(e, task):
    reported.append((task, repr(e)))
