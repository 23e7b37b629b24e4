//! Benchmark of `gravity = "smart"` on real photographs: how much of each photo's subject a crop
//! keeps, against a centre crop, and what choosing the window costs.
//!
//! Run with `cargo bench -p pixbox --bench crops` (photos from `scripts/fetch-photos`). Each photo
//! has its subject marked by hand below (a box, as fractions of the width and height: the kite,
//! the one orange star, the ladybird, the flower's heart, the seed heads, the maple leaf). For a
//! square window and a 1:2 portrait window (what `cover` cuts for a 512x512 or a 400x800 box),
//! the table gives the share of the subject's box inside the window chosen by `smart` and by
//! `centre`. It runs the plugin's own code (`imagekit`), natively.

use std::time::Instant;

#[path = "support/corpus.rs"]
mod corpus;

/// (photo, subject box: left, top, right, bottom as fractions).
const SUBJECTS: [(&str, [f64; 4]); 6] = [
    ("plasma/Kite.jpg", [0.64, 0.30, 0.71, 0.41]),
    ("plasma/OneStandsOut.jpg", [0.60, 0.42, 0.69, 0.58]),
    ("mate-backgrounds/LadyBird.jpg", [0.65, 0.43, 0.75, 0.57]),
    ("mate-backgrounds/YellowFlower.jpg", [0.73, 0.62, 1.00, 0.98]),
    ("mate-backgrounds/TwoWings.jpg", [0.35, 0.28, 0.93, 0.97]),
    ("plasma/FallenLeaf.jpg", [0.55, 0.30, 0.90, 0.86]),
];

fn main() {
    let cache = corpus::cache();

    println!("| photo | square: smart | square: centre | 1:2: smart | 1:2: centre | smart ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut totals = [0.0f64; 4];
    for (name, subject) in SUBJECTS {
        let input = std::fs::read(cache.join(name)).unwrap();
        let image = imagekit::decode(&input, &imagekit::Options::default()).unwrap();
        let (w, h) = (f64::from(image.width()), f64::from(image.height()));
        let mut row = Vec::new();
        let mut smart_ms = 0.0;
        for aspect in [1.0, 0.5] {
            // The largest window of that shape, as `cover` cuts it.
            let (ww, wh) = ((h * aspect).min(w), (w / aspect).min(h));
            let started = Instant::now();
            let (sx, sy) = imagekit::smart_focus(&image, ww, wh).unwrap();
            smart_ms += started.elapsed().as_secs_f64() * 1e3;
            for (gx, gy) in [(sx, sy), (0.5, 0.5)] {
                let left = (gx * w - ww / 2.0).clamp(0.0, w - ww) / w;
                let top = (gy * h - wh / 2.0).clamp(0.0, h - wh) / h;
                row.push(kept(subject, [left, top, left + ww / w, top + wh / h]));
            }
        }
        for (total, value) in totals.iter_mut().zip(&row) {
            *total += value / SUBJECTS.len() as f64;
        }
        let cells: Vec<String> = row.iter().map(|k| format!("{:.0} %", k * 100.0)).collect();
        println!("| {name} | {} | {:.1} |", cells.join(" | "), smart_ms / 2.0);
    }
    let cells: Vec<String> = totals.iter().map(|k| format!("{:.0} %", k * 100.0)).collect();
    println!("| mean | {} | |", cells.join(" | "));
}

/// The share of the `subject` box inside the `window` box (both left, top, right, bottom).
fn kept(subject: [f64; 4], window: [f64; 4]) -> f64 {
    let overlap = |a0: f64, a1: f64, b0: f64, b1: f64| (a1.min(b1) - a0.max(b0)).max(0.0);
    let inside =
        overlap(subject[0], subject[2], window[0], window[2]) * overlap(subject[1], subject[3], window[1], window[3]);
    inside / ((subject[2] - subject[0]) * (subject[3] - subject[1]))
}
