//! The hidden side of the synthetic world: what generates the logs, and what `truth/` reveals.
//!
//! Per item (all factors `latent_dim` wide, standard normal per component):
//! * `shared` — the modality-invariant factor: it shows in both the image and the title;
//! * `image` — image-only (modality-specific), `title` — title-only (modality-specific);
//! * `quality` — a scalar that drives clicks, carts and purchases, hence the statistics;
//! * `idio` — idiosyncratic: in no content, learnable only from interactions with the item id;
//! * `appeal` — a scalar per content modality (image, title): how attractive the photo and the
//!   title are to everyone. It shows in that modality's content (the image map and the title
//!   topics see it), so a model reading the content can judge an item it has never seen, while
//!   an id model must learn it item by item from that item's own exposures.
//!
//! The click logit of user `u` on item `i` of category `c` at slate position `pos` is
//!
//! ```text
//! logit = BASE + offset_c − POSITION_COST·(pos−1)
//!       + w_c,image·(⟨u.image, i.image⟩/√L + APPEAL·i.appeal_image)
//!       + w_c,title·(⟨u.title, i.title⟩/√L + APPEAL·i.appeal_title)
//!       + w_c,shared·⟨u.shared, i.shared⟩/√L + w_c,statistics·quality_i
//!       + w_c,id·(⟨u.idio, i.idio⟩/√L + brand_effect)
//! ```
//!
//! The weights `w_c` follow the category's profile (image-led, title-led, statistics-led or
//! balanced), as the paper's Figure 4 finds modality importance varies by category.

use rand::Rng;
use rand_distr::{Distribution, LogNormal, StandardNormal};

use super::sampling::WeightedIndex;
use super::text::normal_vec;
use super::WorldConfig;

/// Intercept of the click logit; with the factor terms it gives a click rate of a few percent.
pub const BASE_LOGIT: f64 = -3.4;
/// Logit lost per slate position below the first.
pub const POSITION_COST: f64 = 0.12;
/// Share of slate slots filled by recently launched items (the candidate generator's fresh slot).
pub const FRESH_SHARE: f64 = 0.08;
/// Share of slate slots filled from the user's interests (the rest follows global popularity).
pub const INTEREST_SHARE: f64 = 0.5;
/// Days an item counts as fresh after its launch.
pub const FRESH_DAYS: u32 = 3;
/// Weight of an item's (standard normal) image and title appeal inside the image and title terms.
pub const APPEAL: f64 = 0.8;

/// Width of the factors an image or a title is drawn from, `[shared; modality-only; √L·appeal]`,
/// for latent width `dim`.
pub fn content_width(dim: usize) -> usize {
    2 * dim + 1
}

/// The modality a category's clicks lean on most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Image,
    Title,
    Statistics,
    Balanced,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Image => "image",
            Profile::Title => "title",
            Profile::Statistics => "statistics",
            Profile::Balanced => "balanced",
        }
    }

    /// Base weights of (image, title, shared, statistics, id).
    fn base_weights(self) -> [f64; 5] {
        match self {
            Profile::Image => [1.5, 0.3, 0.7, 0.35, 0.6],
            Profile::Title => [0.3, 1.5, 0.7, 0.35, 0.6],
            Profile::Statistics => [0.25, 0.25, 0.45, 1.3, 0.6],
            Profile::Balanced => [0.7, 0.7, 0.7, 0.6, 0.6],
        }
    }
}

#[derive(Debug)]
pub struct Category {
    pub profile: Profile,
    /// (image, title, shared, statistics, id)
    pub weights: [f64; 5],
    pub offset: f64,
    pub centroid: Vec<f64>,
    pub price_median: f64,
}

#[derive(Debug)]
pub struct Item {
    pub category: u32,
    pub shop: u32,
    pub brand: u32,
    pub launch_day: u32,
    pub quality: f64,
    pub popularity: f64,
    pub has_image: bool,
    pub price: Option<f64>,
    pub shared: Vec<f32>,
    pub image: Vec<f32>,
    pub title: Vec<f32>,
    pub idio: Vec<f32>,
    /// Appeal of the image and of the title, standard normal.
    pub appeal: [f64; 2],
}

#[derive(Debug)]
pub struct User {
    pub favorites: [u32; 2],
    pub activity: f64,
    pub shared: Vec<f32>,
    pub image: Vec<f32>,
    pub title: Vec<f32>,
    pub idio: Vec<f32>,
}

/// Everything hidden about the world, plus the samplers the candidate generator uses.
#[derive(Debug)]
pub struct Latent {
    pub dim: usize,
    pub categories: Vec<Category>,
    pub brand_effect: Vec<f64>,
    pub items: Vec<Item>,
    pub users: Vec<User>,
    pub user_sampler: WeightedIndex,
    pub global_sampler: WeightedIndex,
    /// Per category: its items and a popularity sampler over them.
    pub category_items: Vec<Option<(Vec<u32>, WeightedIndex)>>,
    pub category_sampler: WeightedIndex,
    /// Items by launch day.
    pub launched_on: Vec<Vec<u32>>,
    /// Fixed random map from (shared, image-only, image appeal) to the image embedding.
    pub image_map: Vec<f32>,
}

fn to_f32(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

fn jitter<R: Rng>(rng: &mut R, sd: f64) -> f64 {
    let z: f64 = StandardNormal.sample(rng);
    (sd * z).exp()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

impl Latent {
    /// Builds the world from the configuration; everything is drawn from `rng` in a fixed order.
    pub fn new<R: Rng>(cfg: &WorldConfig, rng: &mut R) -> Self {
        let dim = cfg.latent_dim;
        let n_cat = cfg.categories;
        let profiles = [Profile::Image, Profile::Title, Profile::Statistics, Profile::Balanced];
        let categories: Vec<Category> = (0..n_cat)
            .map(|c| {
                let profile = profiles[c % profiles.len()];
                let mut weights = profile.base_weights();
                for w in &mut weights {
                    *w *= jitter(rng, 0.15);
                }
                let z: f64 = StandardNormal.sample(rng);
                let offset = 0.3 * z;
                let centroid = normal_vec(rng, dim);
                let price_median = 20.0 * jitter(rng, 0.8);
                Category { profile, weights, offset, centroid, price_median }
            })
            .collect();
        let category_sampler = WeightedIndex::new((0..n_cat).map(|c| 1.0 / (c as f64 + 1.0).powf(0.8)))
            .expect("at least one category (validated)");
        let shop_quality = normal_vec(rng, cfg.shops);
        let brand_effect: Vec<f64> = normal_vec(rng, cfg.brands).into_iter().map(|x| 0.4 * x).collect();

        let mut items: Vec<Item> =
            (0..cfg.items).map(|_| new_item(rng, cfg, &categories, &category_sampler, &shop_quality)).collect();

        // Popularity: a Zipf law over a ranking that favours quality (good items get shown more).
        let mut keys: Vec<(f64, usize)> = items
            .iter()
            .enumerate()
            .map(|(i, it)| {
                let z: f64 = StandardNormal.sample(rng);
                (0.7 * it.quality + z, i)
            })
            .collect();
        keys.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (rank, (_, i)) in keys.iter().enumerate() {
            items[*i].popularity = (rank as f64 + 1.0).powf(-cfg.zipf_exponent);
        }

        // Launch days: a share of the catalogue arrives after day 0, spread evenly over the days,
        // so every day (the last one included) brings new items.
        let days = cfg.days as usize;
        let mut launched_on = vec![Vec::new(); days];
        if days > 1 {
            let mut order: Vec<usize> = (0..items.len()).collect();
            for i in (1..order.len()).rev() {
                let j = rng.random_range(0..=i);
                order.swap(i, j);
            }
            let n_new = (cfg.items as f64 * cfg.new_item_share).round() as usize;
            for (k, &i) in order.iter().take(n_new).enumerate() {
                // Last day first, so a small share still reaches the last day.
                items[i].launch_day = (days - 1 - k % (days - 1)) as u32;
            }
        }
        for (i, it) in items.iter().enumerate() {
            launched_on[it.launch_day as usize].push(i as u32);
        }

        let global_sampler =
            WeightedIndex::new(items.iter().map(|i| i.popularity)).expect("at least one item (validated)");
        let category_items = (0..n_cat)
            .map(|c| {
                let members: Vec<u32> =
                    (0..items.len() as u32).filter(|&i| items[i as usize].category as usize == c).collect();
                let sampler = WeightedIndex::new(members.iter().map(|&i| items[i as usize].popularity))?;
                Some((members, sampler))
            })
            .collect();

        let users: Vec<User> = (0..cfg.users).map(|_| new_user(rng, dim, &categories, &category_sampler)).collect();
        let user_sampler = WeightedIndex::new(users.iter().map(|u| u.activity)).expect("at least one user");
        let image_map = to_f32(normal_vec(rng, cfg.image_dim * content_width(dim)));

        Self {
            dim,
            categories,
            brand_effect,
            items,
            users,
            user_sampler,
            global_sampler,
            category_items,
            category_sampler,
            launched_on,
            image_map,
        }
    }

    /// The five factor terms (image, title, shared, statistics, id) of a (user, item) pair.
    pub fn terms(&self, u: &User, i: &Item) -> [f64; 5] {
        let s = 1.0 / (self.dim as f64).sqrt();
        [
            s * dot(&u.image, &i.image) + APPEAL * i.appeal[0],
            s * dot(&u.title, &i.title) + APPEAL * i.appeal[1],
            s * dot(&u.shared, &i.shared),
            i.quality,
            s * dot(&u.idio, &i.idio) + self.brand_effect[i.brand as usize],
        ]
    }

    /// The click logit of `user` on `item`, without the position effect.
    pub fn affinity(&self, user: usize, item: usize) -> f64 {
        let (u, i) = (&self.users[user], &self.items[item]);
        let cat = &self.categories[i.category as usize];
        let t = self.terms(u, i);
        BASE_LOGIT + cat.offset + cat.weights.iter().zip(t).map(|(w, x)| w * x).sum::<f64>()
    }

    /// The true click probability of an exposure at 1-based slate `position`.
    pub fn p_click(&self, user: usize, item: usize, position: u32) -> f64 {
        let logit = self.affinity(user, item) - POSITION_COST * f64::from(position.saturating_sub(1));
        1.0 / (1.0 + (-logit).exp())
    }

    /// Probability that a click goes on to a cart, and a cart to a purchase.
    pub fn funnel(&self, item: usize) -> (f64, f64) {
        let q = self.items[item].quality;
        (sigmoid(-1.2 + 0.6 * q), sigmoid(-0.4 + 0.6 * q))
    }

    /// One candidate for `user` on `day` (0-based): fresh, interest-based or popular.
    pub fn candidate<R: Rng>(&self, user: usize, day: u32, rng: &mut R) -> usize {
        let r: f64 = rng.random();
        if r < FRESH_SHARE {
            let from = day.saturating_sub(FRESH_DAYS - 1);
            let n: usize = (from..=day).map(|d| self.launched_on[d as usize].len()).sum();
            if n > 0 {
                let mut k = rng.random_range(0..n);
                for d in from..=day {
                    let l = &self.launched_on[d as usize];
                    if k < l.len() {
                        return l[k] as usize;
                    }
                    k -= l.len();
                }
            }
        }
        for _ in 0..32 {
            let i = if r < FRESH_SHARE + INTEREST_SHARE {
                let c = if rng.random::<f64>() < 0.7 {
                    self.users[user].favorites[rng.random_range(0..2)] as usize
                } else {
                    self.category_sampler.sample(rng)
                };
                match &self.category_items[c] {
                    Some((members, sampler)) => members[sampler.sample(rng)] as usize,
                    None => self.global_sampler.sample(rng),
                }
            } else {
                self.global_sampler.sample(rng)
            };
            if self.items[i].launch_day <= day {
                return i;
            }
        }
        // Day-0 items always exist (validation keeps new_item_share below 1).
        let l = &self.launched_on[0];
        l[rng.random_range(0..l.len())] as usize
    }

    /// The image embedding of an item: ReLU(A·[shared; image-only; √L·appeal]) + noise, like a
    /// VGG fc7 activation (non-negative), `image_dim` wide. Each of the three parts carries a third
    /// of the pre-activation variance.
    pub fn image_embedding<R: Rng>(&self, item: usize, out: &mut Vec<f32>, rng: &mut R) {
        let it = &self.items[item];
        let inputs = content_width(self.dim);
        let width = self.image_map.len() / inputs;
        let scale = 1.0 / (3.0 * self.dim as f32).sqrt();
        let appeal = (self.dim as f32).sqrt() * it.appeal[0] as f32;
        out.clear();
        for row in self.image_map.chunks_exact(inputs).take(width) {
            let (a, rest) = row.split_at(self.dim);
            let (b, c) = rest.split_at(self.dim);
            let x: f32 = a.iter().zip(&it.shared).map(|(w, z)| w * z).sum::<f32>()
                + b.iter().zip(&it.image).map(|(w, z)| w * z).sum::<f32>()
                + c[0] * appeal;
            let n: f32 = StandardNormal.sample(rng);
            out.push((scale * x + 0.3 * n).max(0.0));
        }
    }

    /// The factors a title is drawn from: `[shared; title-only; √L·appeal]`.
    pub fn title_factors(&self, item: usize, z: &mut Vec<f64>) {
        let it = &self.items[item];
        z.clear();
        z.extend(it.shared.iter().chain(&it.title).map(|&x| f64::from(x)));
        z.push((self.dim as f64).sqrt() * it.appeal[1]);
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// An owner (shop or brand) for an item of category `c`: owners are assigned to categories
/// round-robin (owner `o` sells category `o mod n_cat`), so each owner mostly sells one category.
/// One item, its draws in a fixed order (part of the world's byte-for-byte determinism).
fn new_item<R: Rng>(
    rng: &mut R,
    cfg: &WorldConfig,
    categories: &[Category],
    category_sampler: &WeightedIndex,
    shop_quality: &[f64],
) -> Item {
    let (dim, n_cat) = (cfg.latent_dim, cfg.categories);
    let category = category_sampler.sample(rng) as u32;
    let shop = pick_owned(category as usize, n_cat, cfg.shops, rng) as u32;
    let brand = pick_owned(category as usize, n_cat, cfg.brands, rng) as u32;
    let cat = &categories[category as usize];
    let noise = normal_vec(rng, dim);
    let shared: Vec<f64> = cat.centroid.iter().zip(noise).map(|(c, n)| 0.7 * c + 0.7 * n).collect();
    let z: f64 = StandardNormal.sample(rng);
    let quality = 0.6 * shop_quality[shop as usize] + 0.8 * z;
    let has_image = rng.random::<f64>() >= cfg.image_missing_share;
    let price = (rng.random::<f64>() >= cfg.price_missing_share).then(|| {
        let ln = LogNormal::new(cat.price_median.ln(), 0.5).expect("finite parameters");
        (ln.sample(rng) * 100.0).round() / 100.0
    });
    Item {
        category,
        shop,
        brand,
        launch_day: 0,
        quality,
        popularity: 0.0,
        has_image,
        price,
        shared: to_f32(shared),
        image: to_f32(normal_vec(rng, dim)),
        title: to_f32(normal_vec(rng, dim)),
        idio: to_f32(normal_vec(rng, dim)),
        appeal: [StandardNormal.sample(rng), StandardNormal.sample(rng)],
    }
}

/// One user, its draws in a fixed order: interests in two favourite categories.
fn new_user<R: Rng>(rng: &mut R, dim: usize, categories: &[Category], category_sampler: &WeightedIndex) -> User {
    let favorites = [category_sampler.sample(rng) as u32, category_sampler.sample(rng) as u32];
    let noise = normal_vec(rng, dim);
    let shared: Vec<f64> = (0..dim)
        .map(|k| {
            0.4 * (categories[favorites[0] as usize].centroid[k] + categories[favorites[1] as usize].centroid[k])
                + 0.6 * noise[k]
        })
        .collect();
    User {
        favorites,
        activity: LogNormal::new(0.0, 0.8).expect("finite parameters").sample(rng),
        shared: to_f32(shared),
        image: to_f32(normal_vec(rng, dim)),
        title: to_f32(normal_vec(rng, dim)),
        idio: to_f32(normal_vec(rng, dim)),
    }
}

fn pick_owned<R: Rng>(c: usize, n_cat: usize, n_owners: usize, rng: &mut R) -> usize {
    if n_owners >= n_cat {
        let per = (n_owners - c).div_ceil(n_cat);
        c + n_cat * rng.random_range(0..per.max(1))
    } else {
        rng.random_range(0..n_owners)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn correlation(a: &[f64], b: &[f64]) -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    }

    #[test]
    fn image_appeal_shows_in_the_image_and_moves_the_click() {
        let cfg = WorldConfig { users: 50, items: 2000, image_dim: 64, ..WorldConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let world = Latent::new(&cfg, &mut rng);
        // The image map's column that reads the appeal: projecting an image on it recovers the
        // appeal of that item, though ReLU and noise blur it.
        let inputs = content_width(world.dim);
        let direction: Vec<f32> = world.image_map.chunks_exact(inputs).map(|row| row[inputs - 1]).collect();
        let (mut seen, mut appeal, mut image) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..world.items.len() {
            world.image_embedding(i, &mut image, &mut rng);
            seen.push(image.iter().zip(&direction).map(|(x, d)| f64::from(x * d)).sum::<f64>());
            appeal.push(world.items[i].appeal[0]);
        }
        let r = correlation(&seen, &appeal);
        assert!(r > 0.8, "image appeal is visible in the image embedding: r = {r:.3}");
        let title_appeal: Vec<f64> = world.items.iter().map(|it| it.appeal[1]).collect();
        let r = correlation(&seen, &title_appeal);
        assert!(r.abs() < 0.1, "the title's appeal is not in the image: r = {r:.3}");

        // In image-led categories the click follows the image appeal more than in statistics-led ones.
        let follow = |profile: Profile| {
            let (mut a, mut p) = (Vec::new(), Vec::new());
            for (i, it) in world.items.iter().enumerate() {
                if world.categories[it.category as usize].profile == profile {
                    for u in 0..world.users.len() {
                        a.push(it.appeal[0]);
                        p.push(world.affinity(u, i));
                    }
                }
            }
            correlation(&a, &p)
        };
        let (image_led, statistics_led) = (follow(Profile::Image), follow(Profile::Statistics));
        assert!(image_led > statistics_led + 0.3, "image-led {image_led:.3} vs statistics-led {statistics_led:.3}");
    }
}
