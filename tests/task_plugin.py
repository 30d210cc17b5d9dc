"""A user task metric, used by tests through the plugin API (module:function and entry point)."""

def argmax_agreement(reference, actual, labels, **params):
    """Share of samples whose argmax agrees with the reference's, as a user might write it."""
    same = reference.argmax(1) == actual.argmax(1)
    return {"metric": "argmax agreement", "reference": 100.0, "value": 100.0 * float(same.mean()),
            "flip_rate": float((~same).mean())}


def broken(reference, actual, labels, **params):
    raise ValueError("labels are not what I expected")


def no_value(reference, actual, labels, **params):
    return {"reference": 1.0}


NOT_A_FUNCTION = 3
