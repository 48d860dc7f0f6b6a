// Does nothing and succeeds: the floor of a JavaScript plugin attempt
// (instantiate, call, drop), which `sluice bench` measures (W6 JavaScript).
// Written against the world directly, without the SDK, like the Rust noop's
// bare minimum.
export const handler = {
  run(_ctx, _input) {
    return { tag: 'success', val: { output: '', next: [] } };
  },
};
