"""Corpora larger than memory: text files streamed in pieces into a cached, memory-mapped
Arrow file; a fingerprint from metadata plus the content's sha1; tokenizer training on a
seeded sample; packing in processes. Small files with a tiny read size stand in for big ones."""

from __future__ import annotations

import os

import pytest

from lmlab.config import DataConfig
from lmlab.data.sources import load_source, readers
from lmlab.errors import LmlabError

TEXT = "first doc\r\nline two\n\n\n  \nsecond\nmore\n\u2028\nthird é\n\n"


def make_cfg(**overrides):
    return DataConfig(name="t", **{"source": "files", "val_fraction": 0.5, **overrides})


def documents(path, mode, chunk, monkeypatch, skip=False):
    monkeypatch.setattr(readers, "CHUNK", chunk)
    cfg = make_cfg(train=str(path), documents=mode, skip_bad_rows=skip)
    data, fp = load_source(cfg, seed=0, cache_dir=f"{path}.cache{chunk}{mode}{skip}")
    return sorted([*data["train"]["text"], *data["validation"]["text"]]), fp


@pytest.mark.parametrize("mode", ["blank_line", "line", "file"])
def test_pieces_give_the_documents_of_the_whole_file(tmp_path, monkeypatch, mode):
    (tmp_path / "d").mkdir()
    whole = []
    for name, text in (("a.txt", TEXT * 3), ("b.txt", "\n\nx\r\n\ny\n  \nz")):
        path = tmp_path / "d" / name
        path.write_text(text, encoding="utf-8", newline="")
        text = "\n".join(readers.decode_lines(path, None, "utf-8"))
        whole += readers.split_documents([text], mode)
    for chunk in (1, 7, 64, 1 << 20):  # pieces cut inside lines, documents, characters
        assert documents(tmp_path / "d", mode, chunk, monkeypatch)[0] == sorted(whole)


def test_bad_bytes_in_a_later_piece_name_their_line_and_byte(tmp_path, monkeypatch):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nstill fine\n\nbad \xff byte\nok\n\nlast\n")
    monkeypatch.setattr(readers, "CHUNK", 5)
    with pytest.raises(LmlabError, match=r"bad\.txt:4: not valid UTF-8 .*at byte 21\)"):
        load_source(make_cfg(train=str(path)), seed=0, cache_dir=tmp_path)
    docs, _ = documents(path, "blank_line", 5, monkeypatch, skip=True)
    assert docs == ["fine\nstill fine", "last", "ok"]


def test_utf16_is_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "u.txt"
    path.write_text("a b\n\nc d\n", encoding="utf-16")
    monkeypatch.setattr(readers, "CHUNK", 3)
    data, _ = load_source(make_cfg(train=str(path), encoding="utf-16"), seed=0)
    assert sorted([*data["train"]["text"], *data["validation"]["text"]]) == ["a b", "c d"]


def test_cache_hit_reads_no_text_and_is_memory_mapped(tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text(TEXT, encoding="utf-8")
    cfg = make_cfg(train=str(path))
    first, fp = load_source(cfg, seed=0, cache_dir=tmp_path / "cache")
    [arrow] = (tmp_path / "cache" / "sources").glob("*/documents.arrow")
    assert first["train"].cache_files[0]["filename"] == str(arrow)  # memory-mapped, on disk

    def no_reading(*args):
        raise AssertionError("the text was read again on a cache hit")

    monkeypatch.setattr(readers, "text_pieces", no_reading)
    again, fp_again = load_source(cfg, seed=0, cache_dir=tmp_path / "cache")
    assert fp_again == fp and list(again["train"]["text"]) == list(first["train"]["text"])
    monkeypatch.undo()
    # a new mtime, the same content: read again, the same fingerprint (its sha1)
    os.utime(path, ns=(1, 1))
    assert load_source(cfg, seed=0, cache_dir=tmp_path / "cache")[1] == fp
    assert len(list((tmp_path / "cache" / "sources").iterdir())) == 2
    path.write_text(TEXT + "x\n", encoding="utf-8")
    assert load_source(cfg, seed=0, cache_dir=tmp_path / "cache")[1] != fp


def test_skipped_rows_are_reported_again_on_a_cache_hit(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"a\n\nbad \xff\n\nb\n\nc\n")
    cfg = make_cfg(train=str(path), skip_bad_rows=True)
    for _ in range(2):
        data, _ = load_source(cfg, seed=0, cache_dir=tmp_path / "cache")
        assert data.skipped["train"].total == 1
        assert "bad.txt:3: not valid UTF-8" in capsys.readouterr().err


def test_tokenizer_sample_is_seeded_and_bounded():
    from datasets import Dataset

    from lmlab.data.sources.splits import data_mb
    from lmlab.tokenizers import sample

    ds = Dataset.from_dict({"text": [f"document number {i} " * 10 for i in range(20_000)]})
    assert sample(ds, None, 0) is ds and sample(ds, 100, 0) is ds  # small: used whole
    size = data_mb(ds)
    half = sample(ds, size / 2, seed=3)
    assert 0.45 < len(half) / len(ds) < 0.55
    texts = list(half["text"])
    assert texts == list(sample(ds, size / 2, seed=3)["text"])
    assert texts != list(sample(ds, size / 2, seed=4)["text"])
    assert texts == sorted(texts, key=lambda t: int(t.split()[2]))  # in the corpus's order
    with pytest.raises(LmlabError, match="model.tokenizer.sample_mb: must be positive"):
        sample(ds, 0, 0)


def test_tokenizer_cache_key_holds_the_sample_size(tmp_path, tiny_corpus):
    from lmlab.config import ModelConfig, TokenizerConfig
    from lmlab.tokenizers import load_or_train

    for sample_mb in (10, 20, 10):
        cfg = ModelConfig(
            name="t",
            model_type="gpt2",
            tokenizer=TokenizerConfig(vocab_size=300, sample_mb=sample_mb),
        )
        load_or_train(cfg, tiny_corpus * 3, "fp", tmp_path)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_packing_in_processes_gives_full_int32_blocks(monkeypatch, tiny_bpe):
    from datasets import Dataset

    from lmlab.objectives import base

    ds = Dataset.from_dict({"text": [f"line {i} of the corpus, with words" for i in range(5000)]})
    alone = base.pack(ds, tiny_bpe, 16, 0)
    monkeypatch.setattr(base, "PARALLEL_MB", 0)
    shared = base.pack(ds, tiny_bpe, 16, 0)
    assert str(shared.features["input_ids"].feature) == "Value('int32')"
    blocks = list(shared["input_ids"])
    assert all(len(ids) == 16 for ids in blocks)
    # two contiguous shards of 2500 rows, each packed by batches of 2000: the same blocks
    # as one process up to the first batch's end
    assert blocks[:100] == list(alone["input_ids"][:100])
    assert abs(len(blocks) - len(alone)) <= 2
    assert blocks == list(base.pack(ds, tiny_bpe, 16, 0)["input_ids"])


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux's /proc: not here")
def test_packing_in_processes_leaves_no_pages_of_its_output_resident(
    tmp_path, monkeypatch, tiny_bpe
):
    """The main process re-opens the workers' files to join them (reading ~15% of 1.6 GB of
    blocks at 2 GB of corpus): those pages are released."""
    from datasets import Dataset

    from lmlab.objectives import base

    monkeypatch.setattr(base, "PARALLEL_MB", 0)
    texts = [f"line {i} of the corpus, with words" for i in range(20_000)]
    docs = Dataset.from_dict({"text": texts}).map(cache_file_name=str(tmp_path / "docs.arrow"))
    packed = base.pack(docs, tiny_bpe, 16, 0, prefix=[1])
    files = [f["filename"] for f in packed.cache_files]
    assert len(files) == base.PACK_PROCESSES and resident_kib_of(files) == 0
    assert all(ids[0] == 1 and len(ids) == 17 for ids in packed["input_ids"][:50])  # still read


def resident_kib_of(paths) -> int:
    """This process's resident KiB of the memory-mapped files `paths`."""
    wanted, mapping, total = {os.path.realpath(p) for p in paths}, None, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if not fields[0].endswith(":"):  # a mapping's first line: its path is the 6th field
                mapping = fields[5] if len(fields) > 5 else None
            elif fields[0] == "Rss:" and mapping in wanted:
                total += int(fields[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux's /proc: not here")
def test_read_pages_of_a_mapped_corpus_are_released(tmp_path):
    """Reading a memory-mapped file leaves its pages resident (in the process's RSS) until
    release_mapped_pages drops them (releasing: as an iteration goes); the mapping still reads
    the same bytes afterwards."""
    import mmap

    from lmlab.memory import release_mapped_pages, releasing

    path = tmp_path / "corpus.bin"
    path.write_bytes(os.urandom(1024) * 32 * 1024)  # 32 MiB
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        checksum = sum(mapped[i] for i in range(0, len(mapped), 4096))  # every page
        assert resident_kib_of([path]) > 30_000
        release_mapped_pages([path])
        assert resident_kib_of([path]) < 2_000
        pages = (mapped[i] for i in range(0, len(mapped), 4096))
        assert sum(releasing(pages, [path], every=512)) == checksum  # the same bytes
        assert resident_kib_of([path]) < 2_000


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux's /proc: not here")
def test_measuring_a_mapped_corpus_reads_none_of_it(tmp_path):
    """data_mb decides how to sample and pack a corpus: it must not map the corpus into RSS
    (Arrow's nbytes maps the whole of this file, 1000 chunks)."""
    from datasets import Dataset

    from lmlab.data.sources.splits import data_mb
    from lmlab.memory import open_mapped

    path = tmp_path / "documents.arrow"
    docs = Dataset.from_dict({"text": ["word " * 80] * 50_000})
    docs.map(batched=True, writer_batch_size=50, cache_file_name=str(path))
    (mapped,) = open_mapped([path])
    assert data_mb(mapped) == pytest.approx(path.stat().st_size / 1e6, rel=0.02)
    assert data_mb(mapped.select(range(25_000))) == pytest.approx(data_mb(mapped) / 2, rel=0.02)
    assert resident_kib_of([path]) == 0
