from agent import errors


def test_every_reason_has_exactly_one_error_class() -> None:
    root = errors.AgentError
    classes = [c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, root) and c is not root]
    reasons = [c.reason for c in classes]
    assert len(reasons) == len(set(reasons)), "a reason code is used by two classes"
    assert set(reasons) == errors.REASONS


def test_error_for_round_trips() -> None:
    for reason in errors.REASONS:
        err = errors.error_for(reason, "m")
        assert err.reason == reason
        assert str(err) == "m"
    assert isinstance(errors.error_for("no-such-code", "x"), errors.InternalError)


def test_hint_is_shown() -> None:
    assert str(errors.InvalidName("bad", hint="fix it")) == "bad (fix it)"
