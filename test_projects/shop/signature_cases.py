"""Job functions whose signatures ``schedule()`` checks in unusual ways."""


class Unreadable:
    """A callable whose signature ``inspect.signature()`` can't read, as some
    builtins and C extensions are: calls to it are scheduled unchecked."""

    __signature__ = "not a Signature"

    def __call__(self, *args, **kwargs) -> list:
        return [list(args), kwargs]


unreadable = Unreadable()
