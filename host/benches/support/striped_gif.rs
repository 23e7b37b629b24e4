//! The generated animation of the animation benchmark and the frame-limit tests.

/// A `frames`-frame GIF of diagonal stripes moving over bands of colour, 16 colours: every frame
/// covers the canvas and differs from the one before, and it compresses as drawn animations do.
pub fn striped_gif(width: u16, height: u16, frames: u16) -> Vec<u8> {
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    let mut out = Vec::new();
    {
        let mut encoder = gif::Encoder::new(&mut out, width, height, &palette).unwrap();
        encoder.set_repeat(gif::Repeat::Infinite).unwrap();
        for f in 0..frames {
            let pixels: Vec<u8> = (0..height)
                .flat_map(|y| {
                    (0..width).map(move |x| {
                        let stripe = (x + y + f * 8) / 24 % 2 == 0;
                        let band = (u32::from(x) * 8 / u32::from(width)) as u8;
                        if stripe { band * 30 } else { 255 - band * 10 }
                    })
                })
                .collect();
            let mut frame = gif::Frame::from_indexed_pixels(width, height, pixels, None);
            frame.delay = 4;
            encoder.write_frame(&frame).unwrap();
        }
    }
    out
}
