//! One file per block of the paper (§3): modality embedding (§3.1), attention fusion (§3.2),
//! the adversarial network (§3.3), APGRU (§3.4.1), the CTR head (§3.4.2), the whole model, and
//! the Table 2 baselines ([`baselines`], one file per model).

pub mod adversarial;
pub mod apgru;
pub mod attention_fusion;
pub mod baselines;
pub mod ctr_head;
pub mod marn;
pub mod modality_embedding;
