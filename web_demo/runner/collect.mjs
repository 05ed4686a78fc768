// Turn the client's per-row results back into outputs keyed by role, for the parity comparison.
// Shared by the node runner and the browser harness.
export function collectOutputs(manifest, results) {
  const outputs = {};
  for (const spec of manifest.outputs) {
    outputs[spec.role] = results.map((r) => (spec.role === 'value' ? [r.value].flat() : r[spec.role]));
  }
  // classifiers without a label output (Keras): the client's own label, derived from the probabilities
  if (!outputs.label && results.length && results[0].label !== undefined) outputs.label = results.map((r) => r.label);
  return outputs;
}
