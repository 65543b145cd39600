//! Converts images of a world (JPEG, 16-bit PNG) to 8-bit PNGs for a quick
//! look: `cargo run -p synth --example preview -- IN OUT.png`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let img = image::open(&a[1])?;
    let g = img.to_luma16();
    let (lo, hi) = g
        .pixels()
        .fold((u16::MAX, 0u16), |(l, h), p| (l.min(p.0[0]), h.max(p.0[0])));
    let out = image::ImageBuffer::from_fn(g.width(), g.height(), |x, y| {
        let v = g.get_pixel(x, y).0[0];
        image::Luma([(((v - lo) as f32 / (hi - lo).max(1) as f32) * 255.0) as u8])
    });
    out.save(&a[2])?;
    Ok(())
}
