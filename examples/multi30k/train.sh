#!/usr/bin/env bash
# Step 2 of the Multi30k recipe: train one configuration on $WORK/data-bin (made by prepare.sh).
#
#   bash examples/multi30k/train.sh tutorial|best|best-e512|best-sr|best-decay|encdec|lstm|transformer [options]
#
# Options after the configuration's name are passed to fairseq-train after the configuration's own, so an
# option that takes a value overrides the configuration's (e.g. `RUN_NAME=best-d4 train.sh best --dropout 0.4`);
# a flag the configuration sets cannot be unset this way, and --save-dir is refused (use RUN_NAME).
#
# tutorial: the reference notebook's model (bahdanau_gru: emb 256, GRU 512, dropout 0.5) and set-up (Adam 1e-3,
#           batches of 128 sentences, clip 1, 10 epochs, plain cross-entropy).
# best:     our strongest single model on this 2-core CPU within 90 minutes of training: the paper's additive
#           attention, tied 256-dim output embedding, fairseq-lstm initialisation, dropout 0.3 + word dropout 0.1,
#           label smoothing 0.1, Adam 2e-3 halved whenever valid loss stops improving, batches of 128 sentences.
# best-e512: best with 512-dim embeddings (source, target and the tied output), trained under bfloat16 autocast
#           (--autocast-bf16: about 1.5x faster here, which pays for the larger embeddings).
# best-sr:  best with subword regularization: epoch k + 1 trains on prepare.sh's k-th sampled segmentation of
#           the training split (Kudo 2018: from the 64 best, alpha 0.1); epoch 1 and validation use the usual one.
# best-decay: best with a linear learning-rate decay (1.5e-3 after 300 warm-up updates, to 0 at update UPDATES)
#           in place of halving on plateaus: the same quality in our run, from its checkpoint_best.pt.
# encdec:   best without attention (--attention-type none: the fixed context [h->_Tx; h<-_1] at every step, the
#           paper's RNNencdec baseline), the same recipe and budget, for the comparison by sentence length.
# lstm:     fairseq's built-in lstm peer (emb 256, bidirectional 512 encoder, 512 decoder, out-embed 256,
#           dropout 0.3, Adam 1e-3, batch 128), with the same time budget as best.
# transformer: fairseq's own transformer sized for 29k sentences: 4+4 layers, 256 dims, FFN 512, 4 heads, dropout
#           0.3, shared embeddings, Adam (0.9, 0.98) 1e-3 with inverse-sqrt warm-up over 400 updates, label
#           smoothing 0.1, 1024 tokens per batch (screened against 2048 and 4096: more updates win in this budget),
#           the same time budget as best, float32 (--autocast-bf16 is this package's model only; fairseq's
#           own --bf16 runs on CPU with this user dir: 1.44x the updates per minute on AVX512-BF16).
# Precision: best, best-sr, best-decay and encdec train under bfloat16 autocast (--autocast-bf16, about twice the
#      updates per minute with the same validation loss per update) where bfloat16 matrix products are measured
#      faster than float32 (AVX512-BF16 or AMX; not AVX-512 alone, where oneDNN emulates them), in float32 elsewhere; PRECISION=fp32 or bf16 chooses (default auto). The first line of
#      the output says which.
# Env: WORK (default runs/multi30k), DATA_BIN (the binarized data, default $WORK/data-bin; e.g.
#      $WORK/data-bin-distill, a teacher's translations made by distill.sh, for a student), RUN_NAME (the run's directory under $WORK/checkpoints, default the
#      configuration's name), HOURS (training-time budget, default 1.45: fairseq checks it between
#      updates), THREADS (CPU threads, default all), UPDATES (best-decay only: updates to decay over, 4300),
#      INIT (a checkpoint of the same architecture, e.g. an earlier student's average5.pt: the run starts from its
#      weights, with a fresh optimizer, schedule, epoch count and training clock; a resumed run ignores it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK:-$ROOT/runs/multi30k}"
CONFIG="${1:?usage: train.sh tutorial|best|best-e512|best-sr|best-decay|encdec|lstm|transformer [fairseq-train options]}"
shift  # what is left in "$@" goes to fairseq-train after the configuration's options
for option in "$@"; do
  case "$option" in --save-dir|--save-dir=*)
    echo "error: train.sh chooses the checkpoint directory: set RUN_NAME instead of $option" >&2; exit 1 ;;
  esac
done
HOURS="${HOURS:-1.45}"
UPDATES="${UPDATES:-4300}"
export OMP_NUM_THREADS="${THREADS:-$(nproc)}"
SAVE="$WORK/checkpoints/${RUN_NAME:-$CONFIG}"
DATA="${DATA_BIN:-$WORK/data-bin}"
if [ ! -f "$DATA/dict.de.txt" ]; then
  [ -n "${DATA_BIN:-}" ] && echo "error: DATA_BIN $DATA is missing: make it with distill.sh (or prepare.sh)" >&2 \
    || echo "error: $DATA is missing: run prepare.sh first" >&2
  exit 1
fi
if [ "$CONFIG" = best-sr ] && [ -n "${DATA_BIN:-}" ]; then
  echo "error: best-sr trains on prepare.sh's sampled segmentations of the references: DATA_BIN cannot be used" >&2
  exit 1
fi
if [ -n "${INIT:-}" ] && [ ! -f "$INIT" ]; then
  echo "error: INIT $INIT is missing" >&2; exit 1
fi
if [ "$CONFIG" = best-sr ]; then  # fairseq reads epoch e's training data from shard (e - 1) mod (number of shards)
  [ -d "$WORK/data-bin-sampled/1" ] \
    || { echo "error: $WORK/data-bin-sampled is missing: run prepare.sh with SAMPLES > 0" >&2; exit 1; }
  SAMPLED=$(ls "$WORK/data-bin-sampled" | sort -n | sed "s|^|$WORK/data-bin-sampled/|" | paste -sd:)
  DATA="$DATA:$SAMPLED"
fi

COMMON=(--task translation --source-lang de --target-lang en --cpu --num-workers 0 --seed 1
        --log-format simple --log-interval 50 --save-dir "$SAVE" --keep-last-epochs 6)
case "$CONFIG" in
  tutorial)
    ARGS=(--user-dir "$ROOT/fairseq_bahdanau" --arch bahdanau_gru
          --optimizer adam --lr 1e-3 --clip-norm 1.0 --batch-size 128 --max-epoch 10
          --criterion cross_entropy) ;;
  best|best-e512|best-sr|best-decay|encdec)
    ARGS=(--user-dir "$ROOT/fairseq_bahdanau" --arch bahdanau_gru --init-range 0.1
          --dropout 0.3 --word-dropout 0.1 --decoder-out-embed-dim 256 --share-decoder-input-output-embed
          --optimizer adam --clip-norm 1.0 --batch-size 128
          --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-epoch 40 --stop-time-hours "$HOURS")
    if [ "$CONFIG" = encdec ]; then
      ARGS+=(--attention-type none)
    fi
    if [ "$CONFIG" = best-e512 ]; then
      ARGS+=(--encoder-embed-dim 512 --decoder-embed-dim 512 --decoder-out-embed-dim 512 --autocast-bf16)
    fi
    if [ "$CONFIG" != best-decay ]; then
      ARGS+=(--lr 2e-3 --lr-scheduler reduce_lr_on_plateau --lr-shrink 0.5 --lr-patience 0)
    else  # linear decay to 0 over UPDATES (4300: what fit in 77 minutes here)
      ARGS+=(--lr 1.5e-3 --lr-scheduler polynomial_decay --warmup-updates 300 --power 1 --end-learning-rate 0
             --total-num-update "$UPDATES" --max-update "$UPDATES")
    fi ;;
  lstm)
    ARGS=(--arch lstm --encoder-embed-dim 256 --encoder-hidden-size 512 --encoder-bidirectional
          --decoder-embed-dim 256 --decoder-hidden-size 512 --decoder-out-embed-dim 256 --dropout 0.3
          --optimizer adam --lr 1e-3 --clip-norm 1.0 --batch-size 128 --max-epoch 12 --stop-time-hours "$HOURS"
          --user-dir "$ROOT/fairseq_bahdanau") ;;  # the user dir only for compat.py's fixes
  transformer)
    ARGS=(--arch transformer --share-all-embeddings --encoder-layers 4 --decoder-layers 4
          --encoder-embed-dim 256 --decoder-embed-dim 256 --encoder-ffn-embed-dim 512 --decoder-ffn-embed-dim 512
          --encoder-attention-heads 4 --decoder-attention-heads 4 --dropout 0.3 --attention-dropout 0.1
          --activation-dropout 0.1 --weight-decay 0.0001 --optimizer adam --adam-betas "(0.9, 0.98)" --lr 1e-3
          --lr-scheduler inverse_sqrt --warmup-updates 400 --criterion label_smoothed_cross_entropy
          --label-smoothing 0.1 --max-tokens 1024 --max-epoch 100 --stop-time-hours "$HOURS"
          --user-dir "$ROOT/fairseq_bahdanau") ;;  # the user dir only for compat.py's fixes
  *) echo "error: unknown configuration $CONFIG (tutorial, best, best-e512, best-sr, best-decay, encdec, lstm or" \
          "transformer)" >&2; exit 1 ;;
esac
fast_bfloat16() {  # True or False: whether bfloat16 matrix products are measured faster than float32 here
  python -c "from fairseq_bahdanau.model.precision import fast_bfloat16_cpu; print(fast_bfloat16_cpu())" 2>/dev/null \
    | tail -n1 || true
}
FAST_BF16_HERE=""  # asked at most once (the answer is a measurement), and only where a decision needs it
case "$CONFIG" in best|best-sr|best-decay|encdec)
  case "${PRECISION:-auto}" in
    auto) FAST_BF16_HERE="$(fast_bfloat16)"; [ "$FAST_BF16_HERE" = True ] && ARGS+=(--autocast-bf16) ;;
    bf16) ARGS+=(--autocast-bf16) ;;
    fp32) ;;
    *) echo "error: PRECISION must be auto, fp32 or bf16, got ${PRECISION}" >&2; exit 1 ;;
  esac ;;
esac
ARGS+=("$@")
if [[ " ${ARGS[*]} " == *" --autocast-bf16 "* ]]; then
  echo "precision: bfloat16 autocast (--autocast-bf16)"
elif [[ " ${ARGS[*]} " == *" --bf16 "* ]]; then
  echo "precision: bfloat16 (fairseq's --bf16: the whole model, float32 master weights)"
else
  echo "precision: float32"
fi
if [[ " ${ARGS[*]} " == *" --autocast-bf16 "* ]]; then  # generic bfloat16 code is many times slower than float32
  [ -n "$FAST_BF16_HERE" ] || FAST_BF16_HERE="$(fast_bfloat16)"
  if [ "$FAST_BF16_HERE" = False ]; then
    echo "error: $CONFIG trains under --autocast-bf16, but bfloat16 matrix products are slower than float32 on" \
         "this CPU (native bfloat16 needs AVX512-BF16 or AMX), so it would train slower than in float32: train" \
         "best instead" >&2
    exit 1
  fi
fi

mkdir -p "$SAVE"
if [ -n "${INIT:-}" ]; then  # --finetune-from-model alone would keep INIT's training clock (init_checkpoint.py)
  [ -f "$SAVE/checkpoint_last.pt" ] || python "$ROOT/examples/multi30k/init_checkpoint.py" "$INIT" "$SAVE/init.pt"
  ARGS+=(--finetune-from-model "$SAVE/init.pt")
fi
echo "fairseq-train $DATA ${COMMON[*]} ${ARGS[*]}"
start=$(date +%s)
# The console shows the epoch summaries and warnings; on failure, the end of train.log (the whole output).
fairseq-train "$DATA" "${COMMON[@]}" "${ARGS[@]}" 2>&1 | tee -a "$SAVE/train.log" \
  | { grep --line-buffered -E "\| (train|valid) \| epoch|done training|\| WARNING \|" || true; } \
  || { echo "error: fairseq-train failed; the end of $SAVE/train.log:" >&2; tail -20 "$SAVE/train.log" >&2; exit 1; }
echo "training wall time: $(( $(date +%s) - start )) s" | tee -a "$SAVE/train.log"
