"""Mini token2wav round trip on EChat-mini's test replies, judged by Whisper base (not trained here).

    .venv/bin/echat data mini --size mini --out ~/.cache/echat/echat-mini
    .venv/bin/python benchmarks/token2wav_roundtrip.py ~/.cache/echat/echat-mini [--limit 60]
"""

import argparse
import json

from echat.eval.roundtrip import token2wav_round_trip
from echat.token2wav.mini import MiniToken2Wav


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus")
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    token2wav = MiniToken2Wav.from_folder(f"{args.corpus}/speech_tokenizer")
    print(json.dumps(token2wav_round_trip(args.corpus, token2wav, limit=args.limit), indent=2))


if __name__ == "__main__":
    main()
