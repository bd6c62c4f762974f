"""PieceStore: a long run's finished pieces are stored once and read back by the next run with the same key."""
import pytest
import torch

from dpfast.experiments.pieces import PieceStore

KEY = {"settings": {"images": 4}, "seed": 0}


class Counter:
    """compute() for a piece: a known tensor, counting the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, start=0, stop=6):
        self.calls.append((start, stop))
        return torch.arange(start, stop, dtype=torch.float32).view(-1, 1) * 10.0


def test_a_piece_is_computed_once_and_read_back_by_a_later_store_with_the_same_key(tmp_path):
    compute, lines = Counter(), []
    first = PieceStore(tmp_path, KEY, log=lines.append)
    torch.testing.assert_close(first.get("task a sweep", compute), compute())
    assert len(compute.calls) == 2 and first.computed_seconds > 0 and first.read_back == 0
    assert lines and lines[0].startswith("task a sweep (")
    again = PieceStore(tmp_path, KEY)
    torch.testing.assert_close(again.get("task a sweep", compute), compute())
    assert len(compute.calls) == 3  # only the reference call above: the store read the piece back
    assert again.read_back == 1 and again.read_back_seconds == pytest.approx(first.computed_seconds)
    assert again.computed_seconds == 0


def test_another_key_does_not_see_the_pieces(tmp_path):
    compute = Counter()
    PieceStore(tmp_path, KEY).get("piece", compute)
    PieceStore(tmp_path, dict(KEY, seed=1)).get("piece", compute)
    assert len(compute.calls) == 2


def test_a_damaged_piece_is_computed_again_with_a_line_saying_so(tmp_path):
    compute, lines = Counter(), []
    store = PieceStore(tmp_path, KEY)
    store.get("piece", compute)
    store.path("piece").write_bytes(b"not a torch file")
    again = PieceStore(tmp_path, KEY, log=lines.append)
    torch.testing.assert_close(again.get("piece", compute), compute())
    assert len(compute.calls) == 3 and "cannot be read" in lines[0] and again.read_back == 0


def test_stored_lists_the_readable_pieces_with_their_seconds(tmp_path):
    store = PieceStore(tmp_path, KEY, log=lambda line: None)
    assert store.stored() == {}
    store.get("kept", Counter())
    store.get("damaged", Counter())
    store.path("damaged").write_bytes(b"not a torch file")
    stored = PieceStore(tmp_path, KEY).stored()
    assert list(stored) == [store.path("kept").name] and stored[store.path("kept").name] >= 0


def test_blocks_concatenate_to_the_whole_and_a_missing_block_alone_is_recomputed(tmp_path):
    compute = Counter()
    store = PieceStore(tmp_path, KEY)
    whole = store.in_blocks("sweep", 6, 4, compute)
    torch.testing.assert_close(whole, compute(0, 6))
    assert compute.calls[:2] == [(0, 4), (4, 6)]
    store.path("sweep items 0-3").unlink()
    compute.calls.clear()
    torch.testing.assert_close(PieceStore(tmp_path, KEY).in_blocks("sweep", 6, 4, compute), whole)
    assert compute.calls == [(0, 4)]


def test_blocks_can_hold_the_items_along_another_dimension(tmp_path):
    store = PieceStore(tmp_path, KEY)
    lams_by_images = store.in_blocks("sweep", 5, 2, lambda start, stop: torch.arange(start, stop).repeat(3, 1), dim=1)
    torch.testing.assert_close(lams_by_images, torch.arange(5).repeat(3, 1))


def test_one_block_keeps_the_plain_name(tmp_path):
    store = PieceStore(tmp_path, KEY)
    store.in_blocks("sweep", 3, 64, Counter())
    assert store.path("sweep").is_file()


def test_remove_deletes_the_run_s_pieces_and_keeps_other_runs(tmp_path):
    store, other = PieceStore(tmp_path / "pieces", KEY), PieceStore(tmp_path / "pieces", dict(KEY, seed=1))
    store.get("piece", Counter())
    other.get("piece", Counter())
    store.remove()
    assert not store.folder.exists() and other.folder.is_dir()
    other.remove()
    assert not (tmp_path / "pieces").exists()


@pytest.mark.parametrize("count, block", [(0, 4), (4, 0)])
def test_in_blocks_refuses_an_empty_count_or_block(tmp_path, count, block):
    with pytest.raises(ValueError, match=f"count={count}, block={block}"):
        PieceStore(tmp_path, KEY).in_blocks("sweep", count, block, Counter())


def test_a_piece_must_be_a_tensor_and_have_a_name(tmp_path):
    store = PieceStore(tmp_path, KEY)
    with pytest.raises(TypeError, match="'piece': compute\\(\\) must return a tensor, got list"):
        store.get("piece", lambda: [1.0])
    with pytest.raises(ValueError, match="must not be empty"):
        store.get("", Counter())


def test_names_become_safe_file_names_that_stay_apart(tmp_path):
    store = PieceStore(tmp_path, KEY)
    path = store.path("denoise σn=0.1 search c 160/2")
    assert path.name.startswith("denoise_n=0.1_search_c_160_2-") and path.suffix == ".pt" and path.parent.parent == tmp_path
    assert store.path("denoise σn=0.1 search c 160 2") != path
