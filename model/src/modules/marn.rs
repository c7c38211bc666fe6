//! The whole model: MARN (paper §3), its Table 3 ablations and the Table 2 baselines, chosen by
//! [`Variant`].
//!
//! One forward pass:
//! 1. the modality embedding layer runs on the batch's **distinct** items, giving `e_m` and
//!    each item's presence of every modality (an item may lack an image or a title);
//! 2. the item representation `rep` of every distinct item, from the projected modalities
//!    `s_m = S_m(e_m)`: the element-wise sum `Σ_m s_m` (`ids`, `image`, `conc` and the
//!    concatenation-based baselines `youtube_net`, `dupn`, `dien`, `din`; one modality for `ids`
//!    and `image`), MAF (`maf`: `rep = s`), MAF plus the invariant features `c` pooled after one
//!    GRL discriminator (`maf_adv`) or after DDMA (`maf_ddma`, `marn`): `rep = s + c`, or the
//!    group-3 baselines' fusions (`dmf`, `mmss`, `naml`). A modality an item lacks is left out
//!    of every sum, attention, discriminator and max-pool;
//! 3. candidates and behavior slots gather their rows of that table (exact: an item's
//!    representation depends on the item alone);
//! 4. the behaviors are integrated. **BaseModel** (`ids` … `maf_ddma`, and `dmf`, `mmss`, so
//!    that they differ from the ablations in their fusion alone; §4.5: "uses GRU to integrate the
//!    behavior embeddings"): a plain GRU over `rep_t`, without the behavior property, and the
//!    user vector is its **last real hidden state** (the GRU's summary of the whole sequence; an
//!    empty history gives zeros). **APGRU** (`marn` only): the property-gated GRU and the
//!    candidate attention over its states. The baselines' own layers: `youtube_net` mean
//!    pooling, `din` candidate attention, `dupn` an LSTM with the property and attention
//!    pooling, `dien` interest extraction and evolution, `naml` an additive attention;
//! 5. the prediction MLP on `[user, rep_X]`.
//!
//! `lr` and `fm` skip 1–5 and use the candidate's ids and the behavior items directly;
//! `xdeepfm` keeps every modality a field (the candidate's `s_m` and the behaviors' mean `s_m`)
//! and scores them with its own linear part, CIN and DNN instead of 2–5. Each baseline's file
//! in [`super::baselines`] names its paper and what was kept and simplified.
//!
//! # Loss (the paper's Eq. 10 is missing from its text)
//!
//! ```text
//! L = L_CTR + λ(p) · (L_Ds + L_D0 + L_ADV),   λ(p) = λ0 (2 / (1 + exp(−γ p)) − 1)
//! ```
//! with `γ = 10`, `λ0 = 0.05`, `p` the training progress in `[0, 1]`, every auxiliary term a
//! mean cross-entropy over the batch's existing (distinct item, modality) pairs (`L_ADV`
//! weighted by `w_m`, Eq. 7: see [`super::adversarial`]), and the GRL weight 1 so
//! the invariant projection `I` receives exactly `−λ ∂L_ADV/∂c` (the DANN schedule of the GRL
//! paper the authors cite). Why one shared λ and a plain sum: §3.4.2 names exactly these four
//! objectives and one trade-off λ; the auxiliary terms update disjoint parts (`L_D0` only `D0`;
//! `L_Ds` the `S_m` and the shared discriminator matrix; `L_ADV` `D1` and, reversed, `I`), so
//! separate weights would only rescale learning rates; and the ramp from 0 keeps the noisy early
//! discriminators from disturbing the CTR task. `maf_adv` uses `L_ADV` alone. `dien` adds its
//! auxiliary next-behavior loss with the constant weight α
//! ([`MarnConfig::next_behavior_weight`], DIEN's own setup); other variants have no auxiliary
//! term.
//!
//! λ only throttles `D0` if its optimizer lets it: AdaGrad divides a step by the root of the
//! accumulated squared gradients, so a constant factor on the only loss a parameter sees cancels
//! out unless the accumulator starts large against it. The trainer therefore gives `D0` its own
//! AdaGrad with TensorFlow's initial accumulator 0.1
//! ([`crate::TrainConfig::importance_initial_accumulator`]); with the main optimizer's 1e-5,
//! `D0` separated the modalities within a few hundred steps and DDMA collapsed (every `w_m → 0`).
//! `D1` stays on the main optimizer, fast enough to keep pace with `I` in the reversal game.

use std::fmt;
use std::str::FromStr;

use burn::module::Module;
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::adversarial::{Adversarial, AdversarialConfig};
use super::apgru::{ApGru, ApGruConfig, CandidateAttention, CandidateAttentionConfig};
use super::attention_fusion::{masked_sum, AttentionContext, AttentionFusion, AttentionFusionConfig};
use super::baselines::dien::{Dien, DienConfig};
use super::baselines::din::{Din, DinConfig};
use super::baselines::dmf::{Dmf, DmfConfig};
use super::baselines::dupn::{Dupn, DupnConfig};
use super::baselines::fm::FactorizationMachine;
use super::baselines::lr::LogisticRegression;
use super::baselines::mmss::{Mmss, MmssConfig};
use super::baselines::naml::{Naml, NamlConfig};
use super::baselines::xdeepfm::{XDeepFm, XDeepFmConfig};
use super::baselines::youtube_net::mean_pool;
use super::baselines::{present, slots};
use super::ctr_head::{log_loss, CtrHead, CtrHeadConfig};
use super::modality_embedding::{
    Modality, ModalityEmbedding, ModalityEmbeddingConfig, ModalityProjection, ModalityProjectionConfig,
};
use super::{stack, stack_presence, unstack};
use super::{Precision, PrecisionScope};
use crate::batch::{Batch, ModelInputs};
use crate::batch_tensors::BatchTensors;
use crate::error::{Error, Result};

/// Which model to build: the paper's Table 3 ablations (§4.5) and Table 2 baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// BaseModel + IDs: the id embeddings, a GRU (last state), the MLP.
    Ids,
    /// BaseModel + IMAGE: the image alone.
    Image,
    /// BaseModel + CONC: every modality, as the element-wise sum of its projections.
    Conc,
    /// BaseModel + MAF: multimodal attention fusion, `rep = s`.
    Maf,
    /// BaseModel + MAF + ADV: one modality discriminator behind a GRL (no `D0` weighting),
    /// `rep = s + max_m c_m`.
    MafAdv,
    /// BaseModel + MAF + DDMA: the double-discriminator network, `rep = s + max_m(w_m c_m)`.
    MafDdma,
    /// MARN: MAF + DDMA + APGRU.
    Marn,
    /// Logistic regression.
    Lr,
    /// Factorization machine.
    Fm,
    /// YoutubeNet: mean pooling of the behavior items ([`super::baselines::youtube_net`]).
    YoutubeNet,
    /// xDeepFM: linear + CIN + DNN over the modality fields ([`super::baselines::xdeepfm`]).
    #[serde(rename = "xdeepfm")]
    XDeepFm,
    /// DUPN: an LSTM over behaviors and properties, attention pooling
    /// ([`super::baselines::dupn`]).
    Dupn,
    /// DIEN: interest extraction with the auxiliary loss, interest evolution by AUGRU
    /// ([`super::baselines::dien`]).
    Dien,
    /// DMF: hierarchical shared fusion of the modalities ([`super::baselines::dmf`]).
    Dmf,
    /// MMSS: modality attention with an image filter ([`super::baselines::mmss`]).
    Mmss,
    /// NAML: view-level attention over the modalities, attentive user encoder
    /// ([`super::baselines::naml`]).
    Naml,
    /// DIN: candidate attention over the behavior items ([`super::baselines::din`]).
    Din,
}

impl Variant {
    /// Every variant, in the order of the paper's tables.
    pub const ALL: [Variant; 17] = [
        Variant::Ids,
        Variant::Image,
        Variant::Conc,
        Variant::Maf,
        Variant::MafAdv,
        Variant::MafDdma,
        Variant::Marn,
        Variant::Lr,
        Variant::Fm,
        Variant::YoutubeNet,
        Variant::XDeepFm,
        Variant::Dupn,
        Variant::Dien,
        Variant::Dmf,
        Variant::Mmss,
        Variant::Naml,
        Variant::Din,
    ];

    /// The baseline group of the paper's Table 2 (1: LR, FM; 2: YoutubeNet … DIEN; 3: DMF, MMSS,
    /// NAML); `None` for MARN, its ablations and DIN.
    pub fn table2_group(self) -> Option<u8> {
        match self {
            Variant::Lr | Variant::Fm => Some(1),
            Variant::YoutubeNet | Variant::XDeepFm | Variant::Dupn | Variant::Dien => Some(2),
            Variant::Dmf | Variant::Mmss | Variant::Naml => Some(3),
            _ => None,
        }
    }

    /// Table 2's models in the paper's row order: LR … NAML, then MARN.
    pub fn table2() -> Vec<Variant> {
        Variant::ALL.into_iter().filter(|v| v.table2_group().is_some()).chain([Variant::Marn]).collect()
    }

    /// The config name (`maf_ddma`, `youtube_net`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Ids => "ids",
            Variant::Image => "image",
            Variant::Conc => "conc",
            Variant::Maf => "maf",
            Variant::MafAdv => "maf_adv",
            Variant::MafDdma => "maf_ddma",
            Variant::Marn => "marn",
            Variant::Lr => "lr",
            Variant::Fm => "fm",
            Variant::YoutubeNet => "youtube_net",
            Variant::XDeepFm => "xdeepfm",
            Variant::Dupn => "dupn",
            Variant::Dien => "dien",
            Variant::Dmf => "dmf",
            Variant::Mmss => "mmss",
            Variant::Naml => "naml",
            Variant::Din => "din",
        }
    }

    /// The modalities this variant wants (before dropping those the data lacks).
    fn wanted(self) -> &'static [Modality] {
        const ALL: &[Modality] = &[Modality::Ids, Modality::Image, Modality::Title, Modality::Statistic];
        match self {
            Variant::Image => &[Modality::Image],
            Variant::Ids | Variant::Lr | Variant::Fm => &[Modality::Ids],
            // Every other model is fed the features MARN gets (§4.3).
            _ => ALL,
        }
    }
}

impl Variant {
    /// Whether the variant builds MAF (and the invariant projection when adversarial).
    fn fused(self) -> bool {
        matches!(self, Variant::Maf | Variant::MafAdv | Variant::MafDdma | Variant::Marn)
    }

    /// Whether the variant has the cross-modal adversary (`maf_adv`) or DDMA.
    fn adversarial(self) -> bool {
        matches!(self, Variant::MafAdv | Variant::MafDdma | Variant::Marn)
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Variant::ALL.into_iter().find(|v| v.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Variant::ALL.iter().map(|v| v.as_str()).collect();
            Error::Config(format!("unknown variant {s:?}; expected one of {}", names.join(", ")))
        })
    }
}

/// Everything that shapes the model. Human-facing: serde with defaults; [`MarnConfig::validate`]
/// reports every problem at once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarnConfig {
    /// Which model.
    pub variant: Variant,
    /// Modality embedding widths.
    pub embedding: ModalityEmbeddingConfig,
    /// Width of `s_m`, `c_m` and `rep` (paper: 256).
    pub representation_dim: usize,
    /// GRU/APGRU hidden width.
    pub gru_dim: usize,
    /// Hidden width of the candidate attention MLP.
    pub attention_dim: usize,
    /// Prediction MLP hidden widths ([128, 64]; [512, 256] for Taobao).
    pub head_layers: Vec<usize>,
    /// Factor width of `fm`.
    pub fm_dim: usize,
    /// Feature maps of each CIN layer of `xdeepfm`.
    pub cin_layers: Vec<usize>,
    /// Weight α of `dien`'s auxiliary next-behavior loss (DIEN's paper: 1).
    pub next_behavior_weight: f64,
    /// What MAF's attention sees: `own` (Eq. 3, the paper) or `category` (an experiment).
    pub attention_context: AttentionContext,
    /// Whether the user layers that read the behavior property `p_t` (`marn`'s APGRU gate,
    /// `dupn`'s LSTM and attention) see it. `false` feeds them zeros in its place: an ablation.
    pub behavior_property: bool,
    /// Gradient reversal weight.
    pub grl_weight: f64,
    /// λ0 of the auxiliary-loss schedule.
    pub lambda0: f64,
    /// γ of the auxiliary-loss schedule.
    pub gamma: f64,
    /// The linear layers' products: `f32`, or `bf16` (mixed precision, [`Precision`]).
    pub precision: Precision,
}

impl Default for MarnConfig {
    fn default() -> Self {
        Self {
            variant: Variant::Marn,
            embedding: ModalityEmbeddingConfig::default(),
            representation_dim: 256,
            gru_dim: 128,
            attention_dim: 64,
            head_layers: vec![128, 64],
            fm_dim: 16,
            cin_layers: vec![16, 16],
            next_behavior_weight: 1.0,
            attention_context: AttentionContext::Own,
            behavior_property: true,
            grl_weight: 1.0,
            lambda0: 0.05,
            gamma: 10.0,
            precision: Precision::F32,
        }
    }
}

/// Largest layer width a config may ask for.
pub const MAX_WIDTH: usize = 8192;

/// `λ(p) = λ0 (2 / (1 + exp(−γ p)) − 1)`, with `p` clamped to `[0, 1]`.
pub fn aux_loss_weight(progress: f64, lambda0: f64, gamma: f64) -> f64 {
    let p = progress.clamp(0.0, 1.0);
    lambda0 * (2.0 / (1.0 + (-gamma * p).exp()) - 1.0)
}

impl MarnConfig {
    /// Every problem, each naming its field (`embedding.` for the nested widths).
    pub fn problems(&self) -> Vec<String> {
        let mut p = self.embedding.problems();
        for (name, v) in [
            ("representation_dim", self.representation_dim),
            ("gru_dim", self.gru_dim),
            ("attention_dim", self.attention_dim),
            ("fm_dim", self.fm_dim),
        ] {
            if v == 0 || v > MAX_WIDTH {
                p.push(format!("{name} = {v} is out of range: allowed 1 to {MAX_WIDTH}"));
            }
        }
        for (name, widths) in [("head_layers", &self.head_layers), ("cin_layers", &self.cin_layers)] {
            if widths.iter().any(|&w| w == 0 || w > MAX_WIDTH) {
                p.push(format!("{name} = {widths:?}: every width must be 1 to {MAX_WIDTH}"));
            }
        }
        for (name, v) in [
            ("grl_weight", self.grl_weight),
            ("lambda0", self.lambda0),
            ("gamma", self.gamma),
            ("next_behavior_weight", self.next_behavior_weight),
        ] {
            if !v.is_finite() || v < 0.0 {
                p.push(format!("{name} = {v} must be finite and >= 0"));
            }
        }
        p
    }

    /// Report every problem at once.
    pub fn validate(&self) -> Result<()> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(p.join("; ")))
        }
    }

    /// Width of the user vector the prediction MLP sees: item-wide for the pooling user layers,
    /// the recurrent width for the GRU/LSTM ones.
    pub fn user_dim(&self) -> usize {
        match self.variant {
            Variant::YoutubeNet | Variant::Din | Variant::Naml => self.representation_dim,
            _ => self.gru_dim,
        }
    }

    /// The modalities the model will use: the variant's, minus those the data lacks.
    pub fn modalities(&self, inputs: &ModelInputs) -> Vec<Modality> {
        let available = Modality::available(inputs);
        self.variant.wanted().iter().copied().filter(|m| available.contains(m)).collect()
    }

    /// Build the model for data described by `inputs`. Modalities the data lacks are dropped
    /// (an adversarial variant left with one modality keeps `rep = s + c` without
    /// discriminators).
    pub fn init(&self, inputs: &ModelInputs, device: &Device) -> Result<Marn> {
        self.validate()?;
        inputs.validate()?;
        let v = self.variant;
        let modalities = self.modalities(inputs);
        for dropped in v.wanted().iter().filter(|m| !modalities.contains(m)) {
            tracing::warn!(variant = v.as_str(), modality = ?dropped, "modality absent from the data; dropped");
        }
        let m = modalities.len();
        let h = self.representation_dim;
        let e = self.embedding.modality_dim;
        let mut model = Marn {
            embedding: None,
            projection: None,
            fusion: None,
            adversarial: None,
            sequence: None,
            attention: None,
            head: None,
            lr: None,
            fm: None,
            xdeepfm: None,
            dupn: None,
            dien: None,
            dmf: None,
            mmss: None,
            naml: None,
            din: None,
            config: self.clone(),
            inputs: inputs.clone(),
            modalities: modalities.clone(),
        };
        match v {
            Variant::Lr => {
                model.lr = Some(LogisticRegression::new(inputs, device));
                return Ok(model);
            }
            Variant::Fm => {
                model.fm = Some(FactorizationMachine::new(inputs, self.fm_dim, device));
                return Ok(model);
            }
            _ => {}
        }
        if modalities.is_empty() {
            return Err(Error::Config(format!("variant {v} needs modalities the data lacks ({:?})", v.wanted())));
        }
        model.embedding = Some(self.embedding.init(inputs, &modalities, device));
        model.projection = Some(
            ModalityProjectionConfig { input_dim: e, output_dim: h, n_modalities: m, invariant: v.adversarial() }
                .init(device),
        );
        self.init_item_layers(&mut model, inputs, device)?;
        self.init_user_layers(&mut model, device);
        Ok(model)
    }

    /// The item side after the projections: MAF (with the adversary of the adversarial
    /// variants) or a Group-3 baseline's fusion.
    fn init_item_layers(&self, model: &mut Marn, inputs: &ModelInputs, device: &Device) -> Result<()> {
        let (v, h) = (self.variant, self.representation_dim);
        let modalities = model.modalities.clone();
        let m = modalities.len();
        match v {
            _ if v.fused() => {
                let context_dim = match self.attention_context {
                    AttentionContext::Own => None,
                    AttentionContext::Category if modalities.contains(&Modality::Ids) && inputs.n_categories > 0 => {
                        Some(self.embedding.category_dim)
                    }
                    AttentionContext::Category => {
                        return Err(Error::Config(format!(
                            "attention_context = category needs the IDs modality with categories; {v} on this \
                             data has {modalities:?}"
                        )))
                    }
                };
                model.fusion = Some(AttentionFusionConfig { dim: h, n_modalities: m, context_dim }.init(device))
            }
            Variant::Dmf => model.dmf = Some(DmfConfig { dim: h, n_modalities: m }.init(device)),
            Variant::Mmss => {
                let image = modalities.iter().position(|&k| k == Modality::Image);
                model.mmss =
                    Some(MmssConfig { dim: h, attention_dim: self.attention_dim, n_modalities: m, image }.init(device));
            }
            Variant::Naml => model.naml = Some(NamlConfig { dim: h, attention_dim: self.attention_dim }.init(device)),
            _ => {}
        }
        if v.adversarial() && m >= 2 {
            model.adversarial = Some(
                AdversarialConfig {
                    dim: h,
                    n_modalities: m,
                    double: v != Variant::MafAdv,
                    grl_weight: self.grl_weight,
                }
                .init(device),
            );
        }
        Ok(())
    }

    /// The user side and the prediction MLP: xDeepFM's CIN (which has no separate user side),
    /// a pooling or recurrent user layer, then the head.
    fn init_user_layers(&self, model: &mut Marn, device: &Device) {
        let (v, h) = (self.variant, self.representation_dim);
        let m = model.modalities.len();
        match v {
            Variant::XDeepFm => {
                // The candidate's modalities and the behaviors' mean of each: 2M fields.
                model.xdeepfm = Some(
                    XDeepFmConfig {
                        n_fields: 2 * m,
                        field_dim: h,
                        cin_layers: self.cin_layers.clone(),
                        dnn_layers: self.head_layers.clone(),
                    }
                    .init(device),
                );
                return;
            }
            Variant::YoutubeNet | Variant::Naml => {}
            Variant::Din => {
                model.din = Some(DinConfig { item_dim: h, attention_dim: self.attention_dim }.init(device));
            }
            Variant::Dupn => {
                model.dupn = Some(
                    DupnConfig {
                        item_dim: h,
                        property_dim: self.embedding.property_dim(),
                        hidden_dim: self.gru_dim,
                        attention_dim: self.attention_dim,
                    }
                    .init(device),
                );
            }
            Variant::Dien => {
                model.dien = Some(
                    DienConfig { item_dim: h, hidden_dim: self.gru_dim, attention_dim: self.attention_dim }
                        .init(device),
                );
            }
            Variant::Marn => {
                // APGRU: the property-gated GRU and the candidate attention over its states.
                let property_dim = Some(self.embedding.property_dim());
                model.sequence =
                    Some(ApGruConfig { input_dim: h, property_dim, hidden_dim: self.gru_dim }.init(device));
                model.attention = Some(
                    CandidateAttentionConfig {
                        state_dim: self.gru_dim,
                        candidate_dim: h,
                        hidden_dim: self.attention_dim,
                    }
                    .init(device),
                );
            }
            _ => {
                // BaseModel: a plain GRU read out at its last real state.
                model.sequence =
                    Some(ApGruConfig { input_dim: h, property_dim: None, hidden_dim: self.gru_dim }.init(device));
            }
        }
        model.head =
            Some(CtrHeadConfig { input_dim: self.user_dim() + h, layers: self.head_layers.clone() }.init(device));
    }
}

/// The model. Build with [`MarnConfig::init`]; parts a variant does not use are `None`.
#[derive(Module, Debug)]
pub struct Marn {
    /// Modality embedding layer `E`.
    pub embedding: Option<ModalityEmbedding>,
    /// `S_m` (every variant but `lr`/`fm`) and `I` (adversarial variants).
    pub projection: Option<ModalityProjection>,
    /// MAF.
    pub fusion: Option<AttentionFusion>,
    /// GRL discriminator / DDMA.
    pub adversarial: Option<Adversarial>,
    /// GRU or APGRU.
    pub sequence: Option<ApGru>,
    /// Candidate attention.
    pub attention: Option<CandidateAttention>,
    /// Prediction MLP.
    pub head: Option<CtrHead>,
    /// `lr` baseline.
    pub lr: Option<LogisticRegression>,
    /// `fm` baseline.
    pub fm: Option<FactorizationMachine>,
    /// `xdeepfm` (its own prediction layers: no `head`).
    pub xdeepfm: Option<XDeepFm>,
    /// `dupn`'s user layer.
    pub dupn: Option<Dupn>,
    /// `dien`'s user layers.
    pub dien: Option<Dien>,
    /// `dmf`'s fusion.
    pub dmf: Option<Dmf>,
    /// `mmss`'s fusion.
    pub mmss: Option<Mmss>,
    /// `naml`'s item and user encoders.
    pub naml: Option<Naml>,
    /// `din`'s user layer.
    pub din: Option<Din>,
    #[module(skip)]
    config: MarnConfig,
    #[module(skip)]
    inputs: ModelInputs,
    #[module(skip)]
    modalities: Vec<Modality>,
}

/// What a forward pass is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Training or loss evaluation: the auxiliary heads (`D1`, `D_s`, `D0`'s loss) run and give
    /// their losses and diagnostics.
    Train,
    /// Scoring: only what the logits depend on (`D0`'s weights for the pooled `c`, not `D1`,
    /// `D_s` or any loss).
    Score,
}

/// Auxiliary losses of one forward pass (`None` where the variant has no such term).
#[derive(Debug, Clone, Default)]
pub struct AuxLosses {
    /// `L_D0`, `[1]`.
    pub importance: Option<Tensor<1>>,
    /// `L_Ds`, `[1]`.
    pub specific: Option<Tensor<1>>,
    /// `L_ADV`, `[1]`.
    pub adversarial: Option<Tensor<1>>,
    /// DIEN's auxiliary next-behavior loss, `[1]`.
    pub next_behavior: Option<Tensor<1>>,
    /// How the adversarial game stands (adversarial variants).
    pub diagnostics: Option<Diagnostics>,
}

/// The state of the adversarial game on one batch (detached), recorded beside the losses.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    /// Share of existing (item, modality) pairs `D0` classifies right, `[1]` (DDMA only).
    pub importance_accuracy: Option<Tensor<1>>,
    /// Share `D1` classifies right, `[1]`.
    pub modality_accuracy: Tensor<1>,
    /// Mean `w_m` per modality, `[M]`.
    pub mean_weights: Tensor<1>,
    /// Mean over items of `‖c‖ / (‖s‖ + ‖c‖)`: the share of the representation's norm that
    /// comes from the invariant part, `[1]`.
    pub invariant_share: Tensor<1>,
}

/// The per-modality features of the distinct items (Figure 5), read back from the device.
#[derive(Debug, Clone, PartialEq)]
pub struct ModalityFeatures {
    /// The modalities, in model order.
    pub modalities: Vec<Modality>,
    /// Width `d` of every vector.
    pub dim: usize,
    /// `s_m` of every modality, row-major `[n, d]`.
    pub specific: Vec<Vec<f32>>,
    /// `c_m` of every modality, row-major `[n, d]` (empty without `I`).
    pub invariant: Vec<Vec<f32>>,
    /// The pooled invariant representation `c`, row-major `[n, d]` (empty without `I`).
    pub pooled: Vec<f32>,
    /// MAF's attention intensity `‖atten_m‖₂` (Eq. 3) of every modality, `[n]` each (empty
    /// for variants without MAF).
    pub attention: Vec<Vec<f32>>,
    /// `presence[m][i]`: whether item `i` has modality `m`.
    pub presence: Vec<Vec<bool>>,
}

impl AuxLosses {
    /// `L_Ds + L_D0 + L_ADV` over the terms present (the terms λ weighs).
    pub fn sum(&self) -> Option<Tensor<1>> {
        [&self.specific, &self.importance, &self.adversarial].into_iter().flatten().cloned().reduce(|a, b| a + b)
    }
}

/// Output of [`Marn::forward`].
#[derive(Debug, Clone)]
pub struct MarnOutput {
    /// Click logits, `[B]`.
    pub logits: Tensor<1>,
    /// Item representations `rep` of the distinct items, `[n, representation_dim]` (absent
    /// for `lr`/`fm`).
    pub item_representations: Option<Tensor<2>>,
    /// Auxiliary losses.
    pub aux: AuxLosses,
}

/// The loss terms of one batch.
#[derive(Debug, Clone)]
pub struct MarnLoss {
    /// `L = L_CTR + λ (L_Ds + L_D0 + L_ADV) + α L_next` (`dien`), `[1]`.
    pub total: Tensor<1>,
    /// `L_CTR`, `[1]`.
    pub ctr: Tensor<1>,
    /// λ used.
    pub lambda: f64,
    /// The auxiliary terms.
    pub aux: AuxLosses,
}

/// What MAF's attention sees beside `s_m`: the category embedding when the fusion was built
/// with a context, else nothing (and no lookup).
fn maf_context(fusion: &AttentionFusion, embedding: &ModalityEmbedding, x: &BatchTensors) -> Option<Tensor<2>> {
    if fusion.needs_context() {
        embedding.category_context(x)
    } else {
        None
    }
}

fn missing(part: &str) -> Error {
    Error::Config(format!("model has no {part} (built for another variant?)"))
}

impl Marn {
    /// The config it was built from.
    pub fn config(&self) -> &MarnConfig {
        &self.config
    }

    /// The data description it was built for.
    pub fn inputs(&self) -> &ModelInputs {
        &self.inputs
    }

    /// The modalities it uses.
    pub fn modalities(&self) -> &[Modality] {
        &self.modalities
    }

    /// The variant.
    pub fn variant(&self) -> Variant {
        self.config.variant
    }

    /// The behavior property `p_t` the user layer reads: the embeddings, or zeros of the same
    /// shape where `behavior_property` is off (the ablation keeps every width and parameter).
    fn property(&self, embedding: &ModalityEmbedding, x: &BatchTensors) -> Tensor<3> {
        let p = embedding.property(x);
        if self.config.behavior_property {
            p
        } else {
            p.zeros_like()
        }
    }

    /// The device of its parameters (autodiff when built on an autodiff device).
    pub fn device(&self) -> Device {
        if let Some(e) = &self.embedding {
            e.item.weight.val().device()
        } else if let Some(lr) = &self.lr {
            lr.bias.val().device()
        } else if let Some(fm) = &self.fm {
            fm.linear.bias.val().device()
        } else {
            Device::default()
        }
    }

    /// Initialise the title word vectors from a row-major `[title_vocab, word_dim]` table
    /// (whether they are then trained is `embedding.fine_tune_word_vectors`). A model without
    /// titles ignores the table.
    pub fn with_word_vectors(mut self, table: Vec<f32>) -> Result<Self> {
        if let Some(embedding) = self.embedding.as_mut() {
            if let Some(title) = embedding.title.take() {
                embedding.title = Some(title.with_word_vectors(table)?);
            }
        }
        Ok(self)
    }

    /// Move a batch onto this model's device, checking it against the model's inputs.
    pub fn tensors(&self, batch: &Batch) -> Result<BatchTensors> {
        BatchTensors::new(batch, &self.inputs, &self.device())
    }

    /// Item representations `rep` of the distinct items, with the auxiliary losses
    /// ([`Pass::Train`]; none for [`Pass::Score`]).
    ///
    /// # Shapes
    /// - output: `[n, representation_dim]`
    pub fn item_representations(&self, x: &BatchTensors, pass: Pass) -> Result<(Tensor<2>, AuxLosses)> {
        let _precision = PrecisionScope::enter(self.config.precision);
        if self.xdeepfm.is_some() {
            return Err(Error::Config(
                "xdeepfm keeps every modality a separate field: it has no single item representation".into(),
            ));
        }
        let embedding = self.embedding.as_ref().ok_or_else(|| missing("embedding"))?;
        let projection = self.projection.as_ref().ok_or_else(|| missing("projection"))?;
        let e = embedding.forward(x)?;
        let presence = embedding.presence(x);
        let mut aux = AuxLosses::default();
        let Some(fusion) = &self.fusion else {
            let specific = projection.specific(&e);
            let rep = match (&self.dmf, &self.mmss, &self.naml) {
                (Some(dmf), _, _) => dmf.forward(specific, &presence),
                (_, Some(mmss), _) => mmss.forward(specific, &presence),
                (_, _, Some(naml)) => naml.items(specific, &presence),
                // BaseModel+IDs / +IMAGE / +CONC and the concatenation-based baselines: the
                // element-wise sum of the projected modalities.
                _ => masked_sum(specific, &presence),
            };
            return Ok((rep, aux));
        };
        // MAF, I and the discriminators run on the modalities stacked along a first axis: one
        // batched product per layer instead of one per modality.
        let n = x.n_items;
        let e = stack(&e);
        let present = stack_presence(&presence, n, &e.device());
        let specific = projection.specific_stacked(e.clone());
        let s = fusion.forward_stacked(specific.clone(), present.as_ref(), maf_context(fusion, embedding, x).as_ref());
        let Some(c) = projection.invariant_stacked(e.clone()) else {
            return Ok((s, aux));
        };
        let rep = match &self.adversarial {
            // Scoring: the pooled `c` alone, without D1, D_s and their losses.
            Some(adv) if pass == Pass::Score => s + adv.pooled_stacked(c, present.as_ref()),
            Some(adv) => {
                // D1 sees I(e.detach()): the reversed gradient updates I, not the embedding layer.
                // (Both from the values just computed for `e`: the layers again on `e.detach()`.)
                let detached = e.detach();
                let adversary_input =
                    projection.invariant_stacked_again(c.clone(), detached.clone()).ok_or_else(|| missing("I"))?;
                let out = adv.forward_stacked(c, adversary_input, present.as_ref());
                aux.adversarial = Some(out.adversarial_loss);
                aux.importance = out.importance_loss;
                if adv.importance.is_some() {
                    // D_s on S_m(e_m.detach()): no gradient into the embedding layer.
                    let again = projection.specific_stacked_again(specific, detached);
                    aux.specific = Some(adv.specific_loss(again, present.as_ref()));
                }
                let norm = |t: &Tensor<2>| t.clone().detach().square().sum_dim(1).sqrt();
                let (ns, nc) = (norm(&s), norm(&out.invariant));
                let share = (nc.clone() / (ns + nc).clamp_min(1e-12)).mean();
                let d = out.diagnostics;
                aux.diagnostics = Some(Diagnostics {
                    importance_accuracy: d.importance_accuracy,
                    modality_accuracy: d.modality_accuracy,
                    mean_weights: d.mean_weights,
                    invariant_share: share,
                });
                s + out.invariant
            }
            // One modality: nothing to discriminate; c = c_1.
            None => {
                let [_, n, h] = c.dims();
                s + c.narrow(0, 0, 1).reshape([n, h])
            }
        };
        Ok((rep, aux))
    }

    /// `s_m`, `c_m`, the pooled `c` (Figure 5) and MAF's attention norms (Figure 4) of the
    /// distinct items, from one pass through the embedding layer. `None` for variants without
    /// the specific projections (`lr`, `fm`).
    pub fn modality_features(&self, x: &BatchTensors) -> Result<Option<ModalityFeatures>> {
        let (Some(embedding), Some(projection)) = (&self.embedding, &self.projection) else {
            return Ok(None);
        };
        let e = embedding.forward(x)?;
        let presence = embedding.presence(x);
        let specific = projection.specific(&e);
        let invariant = projection.invariant_stacked(stack(&e));
        let pooled = match (&self.adversarial, &invariant) {
            (Some(adv), Some(c)) => {
                let present = stack_presence(&presence, x.n_items, &c.device());
                read(adv.pooled_stacked(c.clone(), present.as_ref()), "pooled invariant")?
            }
            _ => Vec::new(),
        };
        let attention = match &self.fusion {
            Some(fusion) => fusion
                .attention(&specific, maf_context(fusion, embedding, x).as_ref())
                .into_iter()
                .map(|a| read(a.square().sum_dim(1).sqrt(), "attention"))
                .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(Some(ModalityFeatures {
            modalities: self.modalities.clone(),
            dim: self.config.representation_dim,
            specific: specific.into_iter().map(|t| read(t, "specific features")).collect::<Result<_>>()?,
            invariant: invariant
                .map(unstack)
                .unwrap_or_default()
                .into_iter()
                .map(|t| read(t, "invariant features"))
                .collect::<Result<_>>()?,
            pooled,
            attention,
            presence: read_presence(&presence, x.n_items)?,
        }))
    }

    /// `xdeepfm`'s fields: the candidate's `s_m` and the mean `s_m` of the behaviors, per
    /// modality (zero where the item lacks it).
    ///
    /// # Shapes
    /// - output: `[B, 2M, representation_dim]`
    fn fields(&self, x: &BatchTensors) -> Result<Tensor<3>> {
        let embedding = self.embedding.as_ref().ok_or_else(|| missing("embedding"))?;
        let projection = self.projection.as_ref().ok_or_else(|| missing("projection"))?;
        let specific = present(projection.specific(&embedding.forward(x)?), &embedding.presence(x));
        let (b, h) = (x.batch_size, self.config.representation_dim);
        let mut fields: Vec<Tensor<2>> = specific.iter().map(|s| s.clone().select(0, x.candidate.clone())).collect();
        for s in specific {
            fields.push(if x.seq_len == 0 {
                Tensor::zeros([b, h], &s.device())
            } else {
                mean_pool(slots(s, x), x.mask.clone())
            });
        }
        Ok(Tensor::stack(fields, 1))
    }

    /// Logits and auxiliary losses of a batch already on the device.
    ///
    /// # Shapes
    /// - output logits: `[B]`
    pub fn forward(&self, x: &BatchTensors) -> Result<MarnOutput> {
        self.forward_pass(x, Pass::Train)
    }

    /// [`Marn::forward`] for `pass`: [`Pass::Score`] gives the same logits without the
    /// auxiliary heads and losses.
    pub fn forward_pass(&self, x: &BatchTensors, pass: Pass) -> Result<MarnOutput> {
        let _precision = PrecisionScope::enter(self.config.precision);
        if let Some(lr) = &self.lr {
            return Ok(MarnOutput { logits: lr.forward(x), item_representations: None, aux: AuxLosses::default() });
        }
        if let Some(fm) = &self.fm {
            return Ok(MarnOutput { logits: fm.forward(x), item_representations: None, aux: AuxLosses::default() });
        }
        if let Some(xdeepfm) = &self.xdeepfm {
            return Ok(MarnOutput {
                logits: xdeepfm.forward(self.fields(x)?),
                item_representations: None,
                aux: AuxLosses::default(),
            });
        }
        let (rep, mut aux) = self.item_representations(x, pass)?;
        let (b, t) = (x.batch_size, x.seq_len);
        let candidate = rep.clone().select(0, x.candidate.clone());
        let device = rep.device();
        let (padding, mask) = (x.padding.clone(), x.mask.clone());
        let user = match self.config.variant {
            _ if t == 0 => Tensor::zeros([b, self.config.user_dim()], &device),
            Variant::YoutubeNet => mean_pool(slots(rep.clone(), x), mask),
            Variant::Din => self.din.as_ref().ok_or_else(|| missing("DIN attention"))?.user(
                slots(rep.clone(), x),
                candidate.clone(),
                padding,
                mask,
            ),
            Variant::Naml => self.naml.as_ref().ok_or_else(|| missing("NAML user encoder"))?.user(
                slots(rep.clone(), x),
                padding,
                mask,
            ),
            Variant::Dupn => {
                let dupn = self.dupn.as_ref().ok_or_else(|| missing("DUPN"))?;
                let embedding = self.embedding.as_ref().ok_or_else(|| missing("embedding"))?;
                dupn.user(slots(rep.clone(), x), self.property(embedding, x), candidate.clone(), padding, mask)
            }
            Variant::Dien => {
                let out = self.dien.as_ref().ok_or_else(|| missing("DIEN"))?.user(rep.clone(), candidate.clone(), x);
                aux.next_behavior = out.next_behavior;
                out.user
            }
            _ => {
                let gru = self.sequence.as_ref().ok_or_else(|| missing("behavior layer"))?;
                // W rep once per distinct item, gathered per slot.
                let projected = slots(gru.input_projection(rep.clone()), x);
                let property = match (&gru.property, &self.embedding) {
                    (Some(_), Some(embedding)) => Some(self.property(embedding, x)),
                    _ => None,
                };
                let states = gru.forward(projected, property);
                match &self.attention {
                    // APGRU: candidate attention over the states.
                    Some(attention) => attention.forward(states, candidate.clone(), padding, mask),
                    // BaseModel: the last real state.
                    None => {
                        let g = gru.hidden_dim;
                        (states * x.last.clone().unsqueeze_dim::<3>(2)).sum_dim(1).reshape([b, g])
                    }
                }
            }
        };
        let head = self.head.as_ref().ok_or_else(|| missing("prediction head"))?;
        let logits = head.forward(Tensor::cat(vec![user, candidate], 1));
        Ok(MarnOutput { logits, item_representations: Some(rep), aux })
    }

    /// `L = L_CTR + λ(p) (L_Ds + L_D0 + L_ADV)` for training progress `p ∈ [0, 1]`.
    pub fn loss(&self, output: MarnOutput, labels: Tensor<1>, progress: f64) -> MarnLoss {
        let ctr = log_loss(output.logits, labels);
        let lambda = aux_loss_weight(progress, self.config.lambda0, self.config.gamma);
        let mut total = match output.aux.sum() {
            Some(aux) => ctr.clone() + aux.mul_scalar(lambda),
            None => ctr.clone(),
        };
        if let Some(next) = &output.aux.next_behavior {
            total = total + next.clone().mul_scalar(self.config.next_behavior_weight);
        }
        MarnLoss { total, ctr, lambda, aux: output.aux }
    }

    /// Click probabilities of a batch (no gradient is recorded).
    pub fn predict(&self, batch: &Batch) -> Result<Vec<f32>> {
        let model = self.valid();
        let x = model.tensors(batch)?;
        let out = model.forward_pass(&x, Pass::Score)?;
        sigmoid(out.logits)
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| Error::Batch(format!("reading predictions: {e:?}")))
    }
}

fn read<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>> {
    t.into_data().try_to_vec::<f32>().map_err(|e| Error::Batch(format!("reading {what}: {e:?}")))
}

fn read_presence(presence: &[Option<Tensor<2>>], n: usize) -> Result<Vec<Vec<bool>>> {
    presence
        .iter()
        .map(|p| match p {
            Some(p) => Ok(read(p.clone(), "presence")?.into_iter().map(|v| v > 0.5).collect()),
            None => Ok(vec![true; n]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_round_trip() {
        for v in Variant::ALL {
            assert_eq!(v.as_str().parse::<Variant>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{}\"", v.as_str()));
        }
        assert!("nope".parse::<Variant>().is_err());
        let table2: Vec<&str> = Variant::table2().iter().map(|v| v.as_str()).collect();
        assert_eq!(table2, ["lr", "fm", "youtube_net", "xdeepfm", "dupn", "dien", "dmf", "mmss", "naml", "marn"]);
    }

    #[test]
    fn lambda_schedule_ramps_from_zero_to_lambda0() {
        assert_eq!(aux_loss_weight(0.0, 0.05, 10.0), 0.0);
        let end = aux_loss_weight(1.0, 0.05, 10.0);
        assert!((end - 0.05 * (2.0 / (1.0 + (-10f64).exp()) - 1.0)).abs() < 1e-12);
        assert!(aux_loss_weight(0.3, 0.05, 10.0) < end);
    }

    #[test]
    fn config_reports_every_problem() {
        let c = MarnConfig { gru_dim: 0, lambda0: -1.0, ..Default::default() };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("gru_dim") && err.contains("lambda0"), "{err}");
    }
}
