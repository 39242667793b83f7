package deliver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Store errors. Implementations wrap them so callers test with errors.Is.
var (
	// ErrExists is returned by Store.Create when the key already exists: another writer
	// (another detector) owns the decision.
	ErrExists = errors.New("decision exists")
	// ErrConflict is returned by Store.Update when the stored revision is not the given one.
	ErrConflict = errors.New("decision revision conflict")
	// ErrNotFound is returned by Store.Get for an unknown key.
	ErrNotFound = errors.New("decision not found")
)

// Store persists decisions as JSON values under their decision id, with compare-and-set
// revisions. Implementations are safe for concurrent use.
type Store interface {
	// Create stores a new key; it fails with ErrExists if the key exists (first writer wins).
	Create(ctx context.Context, key string, value []byte) (rev uint64, err error)
	// Update replaces the value if the key's current revision is rev, else ErrConflict.
	Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error)
	// Get returns the value and revision of key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, uint64, error)
	// Keys lists every stored key.
	Keys(ctx context.Context) ([]string, error)
}

// KVBucket is the JetStream key-value bucket herd keeps decisions in.
const KVBucket = "herd_decisions"

// KVStore is a Store in a JetStream key-value bucket: it survives restarts of herd and of
// the NATS server (file storage), and several herd processes can share it.
type KVStore struct {
	kv jetstream.KeyValue
}

// OpenKVStore creates or updates the herd_decisions bucket (file storage, one revision per
// key, values older than retention expire; 0 keeps them forever) and returns a Store on it.
func OpenKVStore(ctx context.Context, js jetstream.JetStream, retention time.Duration) (*KVStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      KVBucket,
		Description: "herd decisions and their delivery state",
		History:     1,
		TTL:         retention,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("cannot open key-value bucket %s: %w", KVBucket, err)
	}
	return &KVStore{kv: kv}, nil
}

// Create implements Store.
func (s *KVStore) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	rev, err := s.kv.Create(ctx, key, value)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("cannot create %s: %w", key, ErrExists)
	}
	if err != nil {
		return 0, fmt.Errorf("cannot create %s in %s: %w", key, KVBucket, err)
	}
	return rev, nil
}

// Update implements Store.
func (s *KVStore) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	next, err := s.kv.Update(ctx, key, value, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("cannot update %s at revision %d: %w", key, rev, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("cannot update %s in %s: %w", key, KVBucket, err)
	}
	return next, nil
}

// Get implements Store.
func (s *KVStore) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("cannot get %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("cannot get %s from %s: %w", key, KVBucket, err)
	}
	return e.Value(), e.Revision(), nil
}

// Keys implements Store.
func (s *KVStore) Keys(ctx context.Context) ([]string, error) {
	l, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("cannot list keys of %s: %w", KVBucket, err)
	}
	defer l.Stop()
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	return keys, nil
}

// FileStore is a Store in a directory, one JSON file per decision, for herd without
// JetStream. Writes go to a temporary file that is synced and renamed, so a crash leaves
// either the old or the new value. Only one process may use a directory.
type FileStore struct {
	dir string
	// mu serializes writes so revisions compare-and-set correctly.
	mu sync.Mutex
}

// NewFileStore returns a FileStore in dir, creating it if needed.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("cannot create decision directory: %w", err)
	}
	return &FileStore{dir: dir}, nil
}

type fileValue struct {
	Rev   uint64          `json:"rev"`
	Value json.RawMessage `json:"value"`
}

func (s *FileStore) path(key string) (string, error) {
	if key == "" || strings.ContainsAny(key, `/\.`) || len(key) > 128 {
		return "", fmt.Errorf("bad decision key %q", key)
	}
	return filepath.Join(s.dir, key+".json"), nil
}

func (s *FileStore) read(key string) (fileValue, error) {
	p, err := s.path(key)
	if err != nil {
		return fileValue{}, err
	}
	data, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return fileValue{}, fmt.Errorf("cannot read %s: %w", key, ErrNotFound)
	}
	if err != nil {
		return fileValue{}, fmt.Errorf("cannot read decision %s: %w", key, err)
	}
	var v fileValue
	if err := json.Unmarshal(data, &v); err != nil {
		return fileValue{}, fmt.Errorf("cannot parse decision file %s: %w", p, err)
	}
	return v, nil
}

func (s *FileStore) write(key string, v fileValue) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cannot encode decision %s: %w", key, err)
	}
	f, err := os.CreateTemp(s.dir, key+".tmp*")
	if err != nil {
		return fmt.Errorf("cannot write decision %s: %w", key, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("cannot write decision %s: %w", key, err)
	}
	return nil
}

// Create implements Store.
func (s *FileStore) Create(_ context.Context, key string, value []byte) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.read(key); err == nil {
		return 0, fmt.Errorf("cannot create %s: %w", key, ErrExists)
	} else if !errors.Is(err, ErrNotFound) {
		return 0, err
	}
	if err := s.write(key, fileValue{Rev: 1, Value: value}); err != nil {
		return 0, err
	}
	return 1, nil
}

// Update implements Store.
func (s *FileStore) Update(_ context.Context, key string, value []byte, rev uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.read(key)
	if err != nil {
		return 0, err
	}
	if cur.Rev != rev {
		return 0, fmt.Errorf("cannot update %s at revision %d (stored %d): %w", key, rev, cur.Rev, ErrConflict)
	}
	if err := s.write(key, fileValue{Rev: rev + 1, Value: value}); err != nil {
		return 0, err
	}
	return rev + 1, nil
}

// Get implements Store.
func (s *FileStore) Get(_ context.Context, key string) ([]byte, uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, err := s.read(key)
	if err != nil {
		return nil, 0, err
	}
	return v.Value, v.Rev, nil
}

// Keys implements Store.
func (s *FileStore) Keys(_ context.Context) ([]string, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("cannot list decision directory: %w", err)
	}
	var keys []string
	for _, e := range ents {
		if k, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() {
			keys = append(keys, k)
		}
	}
	return keys, nil
}
