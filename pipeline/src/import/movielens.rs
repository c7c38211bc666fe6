//! MovieLens (100K) into the raw-log contract.
//!
//! Two layouts are read: GroupLens's own (`u.data` tab-separated `user item rating timestamp`;
//! `u.item` `|`-separated `id|title (year)|release date|video date|url|19 genre flags`, Latin-1;
//! `u.user`; `u.genre` when present) and RecBole's atomic files (`*.inter`, `*.item`, `*.user`:
//! tab-separated with a typed header such as `user_id:token`). Both give the same lake.
//!
//! The mapping:
//!
//! | MovieLens | raw log |
//! |---|---|
//! | every rating | an exposure at its timestamp (`request_id` = `<user>-<timestamp>`, no position) |
//! | rating ≥ `positive_rating` (4) | `label` 1: also a click and a `click` behavior at the same time |
//! | title without its trailing "(year)" | `title` (the title modality) |
//! | first genre (in GroupLens's genre order) | `category_id`; `unknown` when none |
//! | — | `shop_id` = `brand_id` = `none`, no `price`, no image |
//! | `u.user` / `*.user` | not in the contract; read to count ratings of users without a profile |

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::{clean_title, for_each_line, input_error, Dataset, Interaction, ItemRecord, Lines, NONE_ID};
use crate::error::Result;

/// Ratings at or above this are clicks, without `--positive-rating`.
pub const DEFAULT_POSITIVE_RATING: f64 = 4.0;

/// The genres of GroupLens's `u.genre`, in flag order (used when the file is absent).
pub const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Which files a MovieLens folder holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    GroupLens { data: PathBuf, item: PathBuf, user: Option<PathBuf>, genre: Option<PathBuf> },
    RecBole { inter: PathBuf, item: PathBuf, user: Option<PathBuf> },
}

impl Layout {
    /// Finds the layout of `dir`.
    pub fn detect(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(input_error(dir, "not a directory (give the folder holding u.data or *.inter)"));
        }
        let file = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        if let Some(data) = file("u.data") {
            let item = file("u.item").ok_or_else(|| input_error(dir, "u.data is there but u.item is missing"))?;
            return Ok(Self::GroupLens { data, item, user: file("u.user"), genre: file("u.genre") });
        }
        let with_ext = |ext: &str| -> Result<Option<PathBuf>> {
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| input_error(dir, format!("cannot list: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
                .collect();
            found.sort();
            match found.len() {
                0 => Ok(None),
                1 => Ok(found.pop()),
                _ => Err(input_error(dir, format!("more than one *.{ext} file: {found:?}"))),
            }
        };
        if let Some(inter) = with_ext("inter")? {
            let item = with_ext("item")?.ok_or_else(|| input_error(dir, "a *.inter file is there but no *.item"))?;
            return Ok(Self::RecBole { inter, item, user: with_ext("user")? });
        }
        Err(input_error(dir, "neither the GroupLens layout (u.data, u.item) nor RecBole's (*.inter, *.item) is here"))
    }
}

/// One rating, before it becomes an interaction.
#[derive(Debug)]
struct Rating {
    user: String,
    item: String,
    rating: f64,
    seconds: i64,
}

/// One movie of the catalogue.
#[derive(Debug)]
struct Movie {
    title: String,
    genre: String,
}

/// Reads the MovieLens folder `dir`; ratings ≥ `positive_rating` are clicks.
pub fn read(dir: &Path, positive_rating: f64) -> Result<Dataset> {
    let layout = Layout::detect(dir)?;
    let mut data = Dataset::default();
    let (ratings, movies, users, ratings_path, item_path) = match &layout {
        Layout::GroupLens { data: d, item, user, genre } => {
            let genres = match genre {
                Some(g) => read_genres(g, &mut data)?,
                None => GENRES.iter().map(|g| g.to_string()).collect(),
            };
            let movies = read_grouplens_items(item, &genres, &mut data)?;
            let ratings = read_ratings(d, None, &mut data)?;
            let users = user.as_deref().map(|u| read_user_ids(u, '|', false, &mut data)).transpose()?;
            (ratings, movies, users, d, item)
        }
        Layout::RecBole { inter, item, user } => {
            let movies = read_recbole_items(item, &mut data)?;
            let ratings = read_ratings(inter, Some(&["user_id", "item_id", "rating", "timestamp"]), &mut data)?;
            let users = user.as_deref().map(|u| read_user_ids(u, '\t', true, &mut data)).transpose()?;
            (ratings, movies, users, inter, item)
        }
    };
    let mut without_profile = BTreeSet::new();
    for (line, r) in ratings {
        if !movies.contains_key(&r.item) {
            data.lines.reject(
                ratings_path,
                line,
                &format!("{}\t{}\t{}\t{}", r.user, r.item, r.rating, r.seconds),
                format!("unknown item: {} is not in {}", r.item, item_path.display()),
            );
            continue;
        }
        if users.as_ref().is_some_and(|u| !u.contains(&r.user)) {
            without_profile.insert(r.user.clone());
        }
        data.interactions.push(Interaction {
            time_ms: r.seconds * 1000,
            request: format!("{}-{}", r.user, r.seconds),
            user: r.user,
            item: r.item,
            clicked: r.rating >= positive_rating,
        });
    }
    // In no particular order: `write` sorts the catalogue.
    data.items = movies
        .into_iter()
        .map(|(id, m)| ItemRecord {
            item: id,
            shop: NONE_ID.to_string(),
            brand: NONE_ID.to_string(),
            category: m.genre,
            title: m.title,
            image: None,
            price: None,
        })
        .collect();
    data.notes.insert(
        "layout".into(),
        serde_json::json!(match layout {
            Layout::GroupLens { .. } => "grouplens",
            Layout::RecBole { .. } => "recbole",
        }),
    );
    data.notes.insert("positive_rating".into(), serde_json::json!(positive_rating));
    data.notes.insert("users_without_profile".into(), serde_json::json!(without_profile.len()));
    Ok(data)
}

/// Calls `f` with the fields of every non-empty data line of a `sep`-separated file. With
/// `header`, the first line is a RecBole header and `f` gets the named columns, in that order (a
/// line with fewer fields is quarantined); without, `f` gets every field.
fn for_each_row(
    path: &Path,
    sep: char,
    header: Option<&[&str]>,
    lines: &mut Lines,
    mut f: impl FnMut(&mut Lines, u64, &str, &[&str]),
) -> Result<()> {
    let mut columns: Option<Vec<usize>> = None;
    for_each_line(path, |line, text| {
        if let (Some(wanted), None) = (header, &columns) {
            columns = Some(recbole_columns(path, text, wanted)?);
            return Ok(());
        }
        if text.trim().is_empty() {
            return Ok(());
        }
        lines.read += 1;
        let fields: Vec<&str> = text.split(sep).collect();
        match &columns {
            None => f(lines, line, text, &fields),
            Some(c) => match c.iter().map(|&i| fields.get(i).copied()).collect::<Option<Vec<&str>>>() {
                Some(picked) => f(lines, line, text, &picked),
                None => lines.reject(path, line, text, format!("{} fields, fewer than the header's", fields.len())),
            },
        }
        Ok(())
    })?;
    if header.is_some() && columns.is_none() {
        return Err(input_error(path, "empty file: no header"));
    }
    Ok(())
}

/// `u.genre`: `name|index` lines.
fn read_genres(path: &Path, data: &mut Dataset) -> Result<Vec<String>> {
    let mut genres: Vec<(usize, String)> = Vec::new();
    for_each_row(path, '|', None, &mut data.lines, |lines, line, text, f| {
        let genre = match f {
            [name, i] if !name.is_empty() => i.trim().parse::<usize>().ok().map(|i| (i, name.to_string())),
            _ => None,
        };
        match genre {
            Some(g) => genres.push(g),
            None => lines.reject(path, line, text, "not a genre line: expected name|index"),
        }
    })?;
    genres.sort();
    if genres.iter().enumerate().any(|(k, (i, _))| k != *i) {
        return Err(input_error(path, "genre indices are not 0, 1, 2, …"));
    }
    Ok(genres.into_iter().map(|(_, n)| n).collect())
}

/// Strips a trailing ` (YYYY)` from a GroupLens title.
fn strip_year(title: &str) -> &str {
    let t = title.trim_end();
    if let Some(open) = t.rfind(" (") {
        let inner = &t[open + 2..];
        if inner.len() == 5 && inner.ends_with(')') && inner[..4].bytes().all(|b| b.is_ascii_digit()) {
            return &t[..open];
        }
    }
    t
}

/// Adds a movie, or quarantines its line when the id is empty or already taken.
fn add_movie(
    movies: &mut HashMap<String, Movie>,
    lines: &mut Lines,
    path: &Path,
    line: u64,
    text: &str,
    id: &str,
    movie: Movie,
) {
    let id = id.trim();
    if id.is_empty() {
        lines.reject(path, line, text, "empty movie id");
    } else if movies.contains_key(id) {
        lines.reject(path, line, text, format!("duplicate movie id {id}"));
    } else {
        movies.insert(id.to_string(), movie);
    }
}

fn read_grouplens_items(path: &Path, genres: &[String], data: &mut Dataset) -> Result<HashMap<String, Movie>> {
    let mut movies = HashMap::new();
    for_each_row(path, '|', None, &mut data.lines, |lines, line, text, f| {
        if f.len() != 5 + genres.len() {
            lines.reject(path, line, text, format!("{} fields, expected {}", f.len(), 5 + genres.len()));
            return;
        }
        let mut genre = None;
        for (k, flag) in f[5..].iter().enumerate() {
            match flag.trim() {
                "1" => {
                    genre.get_or_insert_with(|| genres[k].clone());
                }
                "0" => {}
                other => {
                    lines.reject(path, line, text, format!("genre flag {other:?} is not 0 or 1"));
                    return;
                }
            }
        }
        let movie = Movie { title: clean_title(strip_year(f[1])), genre: genre.unwrap_or_else(|| "unknown".into()) };
        add_movie(&mut movies, lines, path, line, text, f[0], movie);
    })?;
    Ok(movies)
}

/// Parses `user item rating timestamp` fields (shared by both layouts).
fn rating_of(f: &[&str]) -> std::result::Result<Rating, String> {
    let (user, item) = (f[0].trim(), f[1].trim());
    if user.is_empty() || item.is_empty() {
        return Err("empty user or item id".into());
    }
    let rating: f64 = f[2].trim().parse().map_err(|_| format!("rating {:?} is not a number", f[2]))?;
    if !(0.0..=10.0).contains(&rating) {
        return Err(format!("rating {rating} out of range 0..10"));
    }
    let seconds: f64 = f[3].trim().parse().map_err(|_| format!("timestamp {:?} is not a number", f[3]))?;
    // Unix seconds between 1970 and 2200.
    if !(0.0..7.3e9).contains(&seconds) || seconds.fract() != 0.0 {
        return Err(format!("timestamp {:?} is not whole Unix seconds in 1970..2200", f[3]));
    }
    Ok(Rating { user: user.to_string(), item: item.to_string(), rating, seconds: seconds as i64 })
}

/// The ratings of `u.data` (4 tab-separated fields) or of a RecBole `*.inter` (`header`).
fn read_ratings(path: &Path, header: Option<&[&str]>, data: &mut Dataset) -> Result<Vec<(u64, Rating)>> {
    let mut out = Vec::new();
    for_each_row(path, '\t', header, &mut data.lines, |lines, line, text, f| {
        if f.len() != 4 {
            lines.reject(path, line, text, format!("{} tab-separated fields, expected 4", f.len()));
            return;
        }
        match rating_of(f) {
            Ok(r) => out.push((line, r)),
            Err(reason) => lines.reject(path, line, text, reason),
        }
    })?;
    Ok(out)
}

/// A RecBole header: the position of each wanted column (`name:type`).
fn recbole_columns(path: &Path, header: &str, wanted: &[&str]) -> Result<Vec<usize>> {
    let names: Vec<&str> = header.split('\t').map(|h| h.split(':').next().unwrap_or("").trim()).collect();
    wanted
        .iter()
        .map(|w| {
            names
                .iter()
                .position(|n| n == w)
                .ok_or_else(|| input_error(path, format!("the header has no column {w} (it has {})", names.join(", "))))
        })
        .collect()
}

fn read_recbole_items(path: &Path, data: &mut Dataset) -> Result<HashMap<String, Movie>> {
    let mut movies = HashMap::new();
    let order: HashMap<&str, usize> = GENRES.iter().enumerate().map(|(i, g)| (*g, i)).collect();
    let header: &[&str] = &["item_id", "movie_title", "class"];
    for_each_row(path, '\t', Some(header), &mut data.lines, |lines, line, text, f| {
        // The first genre in GroupLens's order, as the flags of u.item give it.
        let genre = f[2].split_whitespace().min_by_key(|g| order.get(g).copied().unwrap_or(usize::MAX));
        let movie = Movie { title: clean_title(f[1]), genre: genre.unwrap_or("unknown").to_string() };
        add_movie(&mut movies, lines, path, line, text, f[0], movie);
    })?;
    Ok(movies)
}

/// The user ids of `u.user` (`|`) or `*.user` (tab, with a header).
fn read_user_ids(path: &Path, sep: char, header: bool, data: &mut Dataset) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    let wanted: &[&str] = &["user_id"];
    for_each_row(path, sep, header.then_some(wanted), &mut data.lines, |lines, line, text, f| {
        match f.first().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some(id) => {
                ids.insert(id.to_string());
            }
            None => lines.reject(path, line, text, "no user id"),
        }
    })?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_are_stripped_only_when_they_are_years() {
        assert_eq!(strip_year("Toy Story (1995)"), "Toy Story");
        assert_eq!(
            strip_year("Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)"),
            "Shanghai Triad (Yao a yao yao dao waipo qiao)"
        );
        assert_eq!(strip_year("Heat (Director's cut)"), "Heat (Director's cut)");
        assert_eq!(strip_year("unknown"), "unknown");
    }

    #[test]
    fn bad_lines_are_quarantined_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("u.data"),
            "1\t10\t5\t881250949\n1\t10\tfive\t881250950\n2\t99\t4\t881250951\nx\n",
        )
        .unwrap();
        let flags = |k: usize| (0..19).map(|i| if i == k { "1" } else { "0" }).collect::<Vec<_>>().join("|");
        std::fs::write(dir.path().join("u.item"), format!("10|Heat (1995)|01-Jan-1995||url|{}\n", flags(1))).unwrap();
        let d = read(dir.path(), 4.0).unwrap();
        assert_eq!(d.interactions.len(), 1);
        assert!(d.interactions[0].clicked);
        assert_eq!(d.items[0].title, "Heat");
        assert_eq!(d.items[0].category, "Action");
        let reasons: Vec<&str> = d.lines.rejects.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("not a number") && d.lines.rejects[0].line == 2);
        assert!(reasons[1].contains("fields"));
        assert!(reasons[2].contains("unknown item: 99"));
        assert_eq!(d.lines.read, 5);
    }

    #[test]
    fn a_folder_without_either_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Layout::detect(dir.path()).unwrap_err().to_string();
        assert!(err.contains("u.data") && err.contains("*.inter"), "{err}");
    }
}
