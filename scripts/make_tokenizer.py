"""Build chatgpt_cli/data/gpt2.tiktoken from the original GPT-2 files (run once, offline).

Usage: python scripts/make_tokenizer.py [../shared/tokenizer/gpt2]
"""

import base64
import sys
from pathlib import Path

from tiktoken.load import data_gym_to_mergeable_bpe_ranks

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared/tokenizer/gpt2")
OUT = Path(__file__).parents[1] / "chatgpt_cli" / "data" / "gpt2.tiktoken"

ranks = data_gym_to_mergeable_bpe_ranks(
    vocab_bpe_file=str(SRC / "vocab.bpe"),
    encoder_json_file=str(SRC / "encoder.json"),
    vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
)
lines = [f"{base64.b64encode(tok).decode()} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text("".join(lines))
print(f"wrote {len(lines)} ranks to {OUT}")
