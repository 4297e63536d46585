#pragma once
// Where adamw.cu's SPAM-AdamW step keeps its scalars, one fp32 device tensor of kScalarCount. A plain
// header (no CUDA) because the optimizer in worker/ names the same slots on every build.

namespace ratio::kernels {

// The worker writes kScalarLr before a step and keeps the next five across steps (they are
// checkpointed); the step writes the rest.
enum SpamAdamWScalar : int {
  kScalarLr,
  kScalarStep,         // steps since the last moment reset (bias correction)
  kScalarNormsSeen,    // gradient norms in the spike statistics
  kScalarNormMean,     // their running mean and sum of squared deviations (Welford)
  kScalarNormM2,
  kScalarSpikes,       // steps counted as spikes
  kScalarNorm,         // this step's global gradient norm before clipping
  kScalarClipCoef,     // min(grad_clip / norm, 1)
  kScalarMomentDecay1,  // beta1 and beta2, times SPAM's soft reset (0.5, 0.9) on a spike
  kScalarMomentDecay2,
  kScalarStepSize,     // lr / (1 − beta1^step)
  kScalarBiasCorrection2Sqrt,
  kScalarWeightDecayFactor,  // 1 − lr · weight_decay
  kScalarCount,
};

}  // namespace ratio::kernels
