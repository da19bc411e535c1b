"""The Lua test of a value that Redis's INCR or HINCRBY would refuse to raise, written once for the scripts that
check a key or a hash field before a script raises it (``publishers._reading.mark_checked``, ``intake.unread``):
Redis undoes nothing of a script that fails half-way, so such a value is refused before the script moves anything."""


def no_count(value: str, signed: bool = False) -> str:
    """A Lua expression, true where the string ``value`` (a Lua expression) is no count an increment takes: one with
    a leading zero (Redis refuses '01'), or of 19 characters or more (INCR's 2^63 - 1 within reach). ``signed``: a
    negative count is one (a hash's count HINCRBY raises)."""
    digits = "^-?[1-9]%d*$" if signed else "^[1-9]%d*$"
    return f"{value} ~= '0' and not (string.match({value}, '{digits}') and #{value} <= 18)"
