//! `marnflow import`: MovieLens (both layouts, from `../shared/data`) and Amazon (fixtures built
//! here in the published formats), and the chain features → train → evaluate on the result.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::util::*;

/// `../shared/data/movielens-100k`, or `None` with a message saying the test skips.
fn movielens_dir(test: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/movielens-100k");
    if dir.join("ml-100k.inter").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipping {test}: {} is absent (MovieLens-100K lives beside the project, never in it)",
            dir.display()
        );
        None
    }
}

/// `marnflow --lake LAKE import ARGS…`, expected to fail as a usage error (exit 2); its stderr.
fn import_fails(lake: &Path, args: &[&str]) -> String {
    let mut all = vec!["--lake", lake.to_str().unwrap(), "import"];
    all.extend_from_slice(args);
    fails(&all, 2)
}

fn import_json(lake: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--lake", lake.to_str().unwrap(), "import"];
    all.extend_from_slice(args);
    all.push("--json");
    summary(&ok(&all))
}

/// Writes MovieLens's GroupLens layout (u.data, u.item in Latin-1 with its 19 genre flags,
/// u.user, u.genre) from the RecBole files.
fn grouplens_copy(recbole: &Path, out: &Path) {
    let genres = marnflow_pipeline::import::movielens::GENRES;
    let read = |name: &str| std::fs::read_to_string(recbole.join(name)).unwrap();
    let mut data = String::new();
    for line in read("ml-100k.inter").lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        data += &format!("{}\t{}\t{}\t{}\n", f[0], f[1], f[2], f[3]);
    }
    std::fs::write(out.join("u.data"), data).unwrap();
    let mut item: Vec<u8> = Vec::new();
    for line in read("ml-100k.item").lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let flags: Vec<&str> =
            genres.iter().map(|g| if f[3].split(' ').any(|c| c == *g) { "1" } else { "0" }).collect();
        let text =
            format!("{}|{} ({})|01-Jan-{}||http://example.invalid/|{}\n", f[0], f[1], f[2], f[2], flags.join("|"));
        // GroupLens ships u.item in Latin-1.
        item.extend(text.chars().map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')));
    }
    std::fs::write(out.join("u.item"), item).unwrap();
    let mut user = String::new();
    for line in read("ml-100k.user").lines().skip(1) {
        user += &line.replace('\t', "|");
        user.push('\n');
    }
    std::fs::write(out.join("u.user"), user).unwrap();
    let genre: String = genres.iter().enumerate().map(|(i, g)| format!("{g}|{i}\n")).collect();
    std::fs::write(out.join("u.genre"), genre).unwrap();
}

#[test]
fn movielens_in_both_layouts_gives_the_same_raw_logs() {
    let Some(dir) = movielens_dir("movielens_in_both_layouts_gives_the_same_raw_logs") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let grouplens = tmp.path().join("ml-100k");
    std::fs::create_dir(&grouplens).unwrap();
    grouplens_copy(&dir, &grouplens);
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let sa = import_json(&a, &["movielens", "--input", dir.to_str().unwrap()]);
    let sb = import_json(&b, &["movielens", "--input", grouplens.to_str().unwrap()]);
    assert_eq!(sa["notes"]["layout"], "recbole");
    assert_eq!(sb["notes"]["layout"], "grouplens");

    // Counted independently from the file: every rating an exposure, ratings >= 4 clicks.
    let inter = std::fs::read_to_string(dir.join("ml-100k.inter")).unwrap();
    let ratings: Vec<f64> = inter.lines().skip(1).map(|l| l.split('\t').nth(2).unwrap().parse().unwrap()).collect();
    let positives = ratings.iter().filter(|&&r| r >= 4.0).count() as u64;
    for s in [&sa, &sb] {
        assert_eq!(s["exposures"].as_u64().unwrap(), ratings.len() as u64, "{s}");
        assert_eq!(s["clicks"].as_u64().unwrap(), positives, "{s}");
        assert_eq!(s["users"], 943);
        assert_eq!(s["items"], 1682);
        assert_eq!(s["categories"], 19);
        assert_eq!(s["lines_quarantined"], 0);
        assert_eq!(s["first_day"], "1997-09-20");
        assert_eq!(s["last_day"], "1998-04-22");
        assert_eq!(s["image_dim"], 0);
    }
    // The two layouts give byte-identical logs; the catalogues differ only where RecBole's copy
    // moved a non-year out of the title (267 "unkonwn", 1412 "… (1995) (V)").
    let files = visible_parquet(&a);
    assert_eq!(files, visible_parquet(&b));
    assert!(files.len() > 3 * 200, "{} files", files.len());
    for f in files
        .iter()
        .filter(|f| f.starts_with("raw/exposures") || f.starts_with("raw/clicks") || f.starts_with("raw/behaviors"))
    {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{} differs", f.display());
    }
    let catalogue = |lake: &Path| {
        let q = "SELECT item_id, shop_id, brand_id, category_id, title FROM raw.items ORDER BY item_id";
        ok(&["--lake", lake.to_str().unwrap(), "sql", "--format", "csv", q])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (ca, cb) = (catalogue(&a), catalogue(&b));
    assert_eq!(ca.len(), 1683);
    let differ: Vec<&str> =
        ca.iter().zip(&cb).filter(|(x, y)| x != y).map(|(x, _)| x.split(',').next().unwrap()).collect();
    assert_eq!(differ, ["1412", "267"]);
    // The mapping, read back through SQL: titles without the year, the first genre.
    let l = a.to_str().unwrap();
    let toy =
        ok(&["--lake", l, "sql", "--format", "csv", "SELECT title, category_id FROM raw.items WHERE item_id = '1'"]);
    assert_eq!(toy, "title,category_id\nToy Story,Animation\n");
    let clicks = ok(&[
        "--lake",
        l,
        "sql",
        "--format",
        "csv",
        "SELECT count(*) FROM raw.behaviors b JOIN raw.clicks c ON b.user_id = c.user_id AND b.item_id = c.item_id \
         AND b.event_time = c.event_time WHERE b.behavior = 'click'",
    ]);
    assert_eq!(clicks.lines().nth(1).unwrap().parse::<u64>().unwrap(), positives);

    // A bad line is quarantined with its place and reason, not dropped; importing again replaces it.
    let mut data = std::fs::read_to_string(grouplens.join("u.data")).unwrap();
    data += "7\t50\tfive\t881250949\n";
    std::fs::write(grouplens.join("u.data"), data).unwrap();
    let c = tmp.path().join("c");
    let sc = import_json(&c, &["movielens", "--input", grouplens.to_str().unwrap()]);
    assert_eq!(sc["lines_quarantined"], 1);
    let q = ok(&[
        "--lake",
        c.to_str().unwrap(),
        "sql",
        "--format",
        "csv",
        "SELECT line, reason FROM quarantine.import_movielens",
    ]);
    assert_eq!(q, format!("line,reason\n{},\"rating \"\"five\"\" is not a number\"\n", ratings.len() + 1));
    // Past --max-bad-share the import fails, naming the line.
    let err = import_fails(&c, &["movielens", "--input", grouplens.to_str().unwrap(), "--max-bad-share", "0"]);
    assert!(err.contains("u.data:100001") && err.contains("not a number"), "{err}");
    // A lake that holds other logs is refused.
    let world = tmp.path().join("world");
    tiny_world(&world, 3);
    let err = import_fails(&world, &["movielens", "--input", dir.to_str().unwrap()]);
    assert!(err.contains("empty lake"), "{err}");
}

/// The README's MovieLens command, on a shorter span: import, features, two models, pooled
/// evaluation. Each item's mean label over the training days scores AUC 0.668 on these test
/// days (19k training rows), so a model that learns the items beats 0.6; one that learns
/// nothing stays near 0.5.
#[test]
fn the_movielens_demo_trains_and_evaluates_on_real_ratings() {
    let Some(dir) = movielens_dir("the_movielens_demo_trains_and_evaluates_on_real_ratings") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (lake, report) = (tmp.path().join("lake"), tmp.path().join("report"));
    let out = ok(&[
        "--lake",
        lake.to_str().unwrap(),
        "demo",
        "--movielens",
        dir.to_str().unwrap(),
        "--since",
        "1998-03-01",
        "--test-days",
        "10",
        "--variants",
        "youtube_net,ids",
        "--epochs",
        "3",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(out.contains("evaluating on 1998-04-13 .. 1998-04-22"), "{out}");
    assert!(!out.contains("Bayes-optimal (truth/)"), "MovieLens has no truth/: {out}");
    for name in ["table3.md", "deciles.png", "youtube_net/summary.md", "ids/evaluation.json"] {
        assert!(report.join(name).exists(), "the report lacks {name}");
    }
    for model in ["youtube_net", "ids"] {
        let e: serde_json::Value =
            serde_json::from_slice(&std::fs::read(report.join(model).join("evaluation.json")).unwrap()).unwrap();
        assert_eq!(e["date"], "1998-04-13_1998-04-22");
        let auc = e["auc"].as_f64().unwrap();
        assert!(auc > 0.6, "{model}: AUC {auc} on MovieLens");
        assert!(e["oracle_auc"].is_null());
        assert_eq!(e["rows"].as_u64().unwrap(), 3052, "ratings from 1998-04-13 to 1998-04-22");
    }
}

// --- Amazon -----------------------------------------------------------------------------------

const IMAGE_DIM: usize = 4096;

fn gz(path: &Path, text: &str) {
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap();
}

/// A small catalogue in the published formats: metadata as gzipped Python literals, reviews as
/// strict JSON lines, image features as 10-byte ASINs with 4096 float32 values each. Over 120
/// lines on purpose: most of it is the fixture's data, written out inline.
fn amazon_fixture(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut meta = String::new();
    for i in 0..40 {
        let brand = if i % 3 == 0 { String::new() } else { format!(", 'brand': 'Brand{}'", i % 4) };
        meta += &format!(
            "{{'asin': 'B{i:09}', 'title': \"Widget's {i} deluxe\", 'price': {}.5, 'categories': [['Electronics', 'Cat{}']]{brand}}}\n",
            i % 7,
            i % 5
        );
    }
    meta += "{'asin': 'B000000001', 'title': 'a duplicate'}\n";
    meta += "{'asin': 'broken\n";
    let meta_path = dir.join("meta.json.gz");
    gz(&meta_path, &meta);
    let mut reviews = String::new();
    for u in 0..30 {
        for k in 0..6 {
            let item = (u * 7 + k * 3) % 40;
            let day = 1_388_534_400 + 86_400 * ((u + k * 5) % 20);
            reviews += &format!(
                "{{\"reviewerID\": \"A{u:05}\", \"asin\": \"B{item:09}\", \"overall\": 5.0, \"unixReviewTime\": {day}}}\n"
            );
        }
    }
    reviews += "{\"reviewerID\": \"A99999\", \"asin\": \"B999999999\", \"unixReviewTime\": 1388534400}\n";
    let reviews_path = dir.join("reviews.json");
    std::fs::write(&reviews_path, reviews).unwrap();
    let mut images = Vec::new();
    for i in 0..40 {
        images.extend_from_slice(format!("B{i:09}").as_bytes());
        for j in 0..IMAGE_DIM {
            images.extend_from_slice(&(((i * 31 + j) % 17) as f32 / 17.0).to_le_bytes());
        }
    }
    let images_path = dir.join("image_features.b");
    std::fs::write(&images_path, images).unwrap();
    (reviews_path, meta_path, images_path)
}

// Over 120 lines on purpose: one end-to-end scenario whose steps build on each other; split,
// each part would have to rebuild the lake the previous parts left.
#[test]
fn amazon_import_samples_seeded_negatives_and_runs_the_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let (reviews, meta, images) = amazon_fixture(tmp.path());
    let args = |seed: &str| {
        vec![
            "amazon".to_string(),
            "--reviews".into(),
            reviews.to_str().unwrap().into(),
            "--meta".into(),
            meta.to_str().unwrap().into(),
            "--image-features".into(),
            images.to_str().unwrap().into(),
            "--seed".into(),
            seed.into(),
            "--max-bad-share".into(),
            "0.05".into(),
        ]
    };
    let import = |lake: &Path, seed: &str| {
        let a = args(seed);
        import_json(lake, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let s = import(&a, "5");
    assert_eq!(s["notes"]["reviews"], 180);
    assert_eq!(s["clicks"], 180);
    assert_eq!(s["exposures"], 360, "one negative per review: {s}");
    assert_eq!(s["items"], 40);
    assert_eq!(s["items_with_image"], 40);
    assert_eq!(s["image_dim"], IMAGE_DIM);
    assert_eq!(s["lines_quarantined"], 3, "{s}");
    assert_eq!(s["days"], 20);
    // The same seed gives the same bytes; another seed other negatives.
    import(&b, "5");
    import(&c, "6");
    let files = visible_parquet(&a);
    for f in &files {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{} differs", f.display());
    }
    let day = "raw/exposures/dt=2014-01-01/part-00000.parquet";
    assert!(
        std::fs::read(a.join(day)).unwrap() != std::fs::read(c.join(day)).unwrap(),
        "seed 6 drew the same negatives"
    );

    let l = a.to_str().unwrap();
    let sql = |q: &str| ok(&["--lake", l, "sql", "--format", "csv", q]);
    // No negative (an exposure without a click) is an item its user reviewed.
    let bad = sql(
        "SELECT count(*) FROM raw.exposures e JOIN raw.clicks k ON k.user_id = e.user_id AND k.item_id = e.item_id \
         LEFT JOIN raw.clicks c ON c.request_id = e.request_id AND c.item_id = e.item_id WHERE c.item_id IS NULL",
    );
    assert_eq!(bad, "count(*)\n0\n");
    let items = sql("SELECT brand_id, category_id, price, title FROM raw.items WHERE item_id = 'B000000004'");
    assert_eq!(items, "brand_id,category_id,price,title\nBrand0,Cat4,4.5,Widget's 4 deluxe\n");
    let reasons = sql("SELECT reason FROM quarantine.import_amazon ORDER BY file, line");
    assert!(reasons.contains("unknown asin: B999999999") && reasons.contains("duplicate asin"), "{reasons}");
    assert!(reasons.contains("unreadable record"), "{reasons}");

    // The chain runs on it, images included.
    ok(&["--lake", l, "features", "--from", "2014-01-01", "--to", "2014-01-20"]);
    let cfg = tmp.path().join("small.toml");
    std::fs::write(
        &cfg,
        "[train]\nbatch_size = 32\n[train.model]\nrepresentation_dim = 8\ngru_dim = 8\nattention_dim = 4\nhead_layers = [8]\n\
         [train.model.embedding]\nmodality_dim = 8\ntitle_filters = 2\n",
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let t = summary(&ok(&[
        "--lake",
        l,
        "--config",
        c,
        "train",
        "--model",
        "amz",
        "--variant",
        "marn",
        "--from",
        "2014-01-01",
        "--to",
        "2014-01-15",
        "--json",
    ]));
    assert!(t["samples"].as_u64().unwrap() > 200, "{t}");
    let e = summary(&ok(&[
        "--lake",
        l,
        "--config",
        c,
        "evaluate",
        "--model",
        "amz@v1",
        "--date",
        "2014-01-16",
        "--to",
        "2014-01-20",
        "--json",
    ]));
    assert!(e["auc"].as_f64().is_some() && e["rows"].as_u64().unwrap() > 0, "{e}");

    // Errors say what and where.
    let err = import_fails(&a, &["amazon", "--reviews", "/no/such/file", "--meta", meta.to_str().unwrap()]);
    assert!(err.contains("/no/such/file") && err.contains("cannot open"), "{err}");
    let cut = tmp.path().join("cut.b");
    std::fs::write(&cut, &std::fs::read(&images).unwrap()[..10 + 4 * IMAGE_DIM + 100]).unwrap();
    let d = tmp.path().join("d");
    let err = import_fails(
        &d,
        &[
            "amazon",
            "--reviews",
            reviews.to_str().unwrap(),
            "--meta",
            meta.to_str().unwrap(),
            "--image-features",
            cut.to_str().unwrap(),
        ],
    );
    assert!(err.contains("cut.b") && err.contains("ends inside record 2"), "{err}");
}
