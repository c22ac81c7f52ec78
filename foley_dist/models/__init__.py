"""Model definitions: encoders, the DiT, the flow sampler, the audio decoder, checkpoint loading."""
