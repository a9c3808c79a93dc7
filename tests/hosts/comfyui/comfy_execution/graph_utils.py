class ExecutionBlocker:
    """Returned as an output value: every node consuming it is not run (message -> error shown)."""

    def __init__(self, message):
        self.message = message
