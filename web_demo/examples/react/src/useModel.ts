// useModel(load): a model for a component, loaded once however often React mounts it. StrictMode mounts,
// unmounts and mounts again in development: the second mount reuses the first load, and the model is
// released only when no mounted component uses it any more.
import { useEffect, useState } from 'react';

interface Releasable { release(): Promise<void> }
interface Entry<M> { promise: Promise<M>; users: number; releaseTimer?: ReturnType<typeof setTimeout> }
const loaded = new Map<() => Promise<unknown>, Entry<unknown>>();

export type ModelState<M> = { status: 'loading' } | { status: 'ready'; model: M } | { status: 'error'; error: Error };

export function useModel<M extends Releasable>(load: () => Promise<M>): ModelState<M> {
  const [state, setState] = useState<ModelState<M>>({ status: 'loading' });
  useEffect(() => {
    let entry = loaded.get(load) as Entry<M> | undefined;
    if (!entry) {
      entry = { promise: load(), users: 0 };
      loaded.set(load, entry);
    }
    clearTimeout(entry.releaseTimer);
    entry.users += 1;
    let mounted = true;
    entry.promise.then(
      (model) => { if (mounted) setState({ status: 'ready', model }); },
      (error: Error) => { if (mounted) setState({ status: 'error', error }); },
    );
    const current = entry;
    return () => {
      mounted = false;
      current.users -= 1;
      // released a moment later, so that StrictMode's immediate remount finds the model still loaded
      current.releaseTimer = setTimeout(() => {
        if (current.users > 0) return;
        loaded.delete(load);
        current.promise.then((model) => model.release(), () => {});
      }, 1000);
    };
  }, [load]);
  return state;
}
