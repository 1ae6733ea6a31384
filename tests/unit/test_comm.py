"""Decoding what arrives (the MPI side of launcher/comm.py is exercised by the tests/mpi tier; the
idle backoff is base/pacing.py's: tests/unit/test_pacing.py)."""

from __future__ import annotations


def test_an_unknown_tag_is_a_protocol_error_naming_rank_and_tag() -> None:
    """15.10: an unknown MPI tag raised ValueError from the Tag enum, naming neither."""
    import pytest

    from balsam_mpi.base.errors import BalsamError
    from balsam_mpi.launcher.comm import decode
    from balsam_mpi.protocol import Hello, ProtocolError, Report, Tag

    with pytest.raises(ProtocolError, match=r"rank 3 .* tag 99") as err:
        decode(3, 99, object())
    assert isinstance(err.value, BalsamError)
    with pytest.raises(ProtocolError, match="rank 2 sent tag 12"):
        decode(2, int(Tag.REPORT), Hello(2, "h", 1, 1, 0))
    report = Report(rank=1, acked=0, free=1.0, running=0, queued=0)
    assert decode(1, int(Tag.REPORT), report) is report
