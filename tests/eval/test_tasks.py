import pytest

from adpo.eval.config import EvalConfig
from adpo.eval.tasks import Data
from adpo.utils.config import ConfigError


def _data(export_dir, **over) -> Data:
    files = {"harmful": str(export_dir / "harmful_test.jsonl"), "utility": str(export_dir / "utility_test.jsonl"),
             "benign": str(export_dir / "benign_lookalike_test.jsonl")}
    return Data(EvalConfig.from_dict({"data": files, **over}))


def test_benign_tasks_have_their_own_row_limit(export_dir):
    data = _data(export_dir, limit=2, benign_limit=3)
    assert len(data.harmful) == 2 and len(data.utility) == 3 and len(data.benign) == 3
    everything = _data(export_dir, limit=2, benign_limit=None)
    assert len(everything.utility) == 8 and len(everything.benign) == 8  # the whole file (conftest: n_eval=8)


def test_benign_limit_must_be_positive():
    with pytest.raises(ConfigError, match="benign_limit"):
        EvalConfig.from_dict({"benign_limit": 0})
