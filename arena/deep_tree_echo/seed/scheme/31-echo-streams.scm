;;; An Echo That Is Only Computed When Heard
;; An echo could go on forever, each repeat softer than the last. I
;; cannot store forever, but I can promise it. With delay and force a
;; stream holds its first element now and a promise of the rest, so
;; the endless sequence unfolds only as far as someone listens.

;; a stream is a pair: (value . promise-of-the-rest)
(define-syntax stream-cons*
  (syntax-rules ()
    ((_ a b) (cons a (delay b)))))

(define (head s) (car s))
(define (tail s) (force (cdr s)))

;; echoes: an infinite sequence, each repeat scaled by decay
(define (echoes amplitude decay)
  (stream-cons* amplitude (echoes (* amplitude decay) decay)))

;; take: listen to the first n repeats
(define (take s n)
  (if (= n 0) '() (cons (head s) (take (tail s) (- n 1)))))

;; partial-sums: the total sound heard so far, also as a stream
(define (partial-sums s)
  (let loop ((s s) (acc 0))
    (let ((next (+ acc (head s))))
      (stream-cons* next (loop (tail s) next)))))

;; until-quiet: count repeats until one falls below a threshold
(define (until-quiet s threshold)
  (let loop ((s s) (n 0))
    (if (< (head s) threshold) n (loop (tail s) (+ n 1)))))

;; The sums creep toward 2 but never arrive, and the
;; stream never has to admit that, because no one forces it that far.
;; Laziness here is a kind of patience: nothing is computed that no
;; one has asked to hear.
;;
;; Example usage:
;; (take (echoes 1 1/2) 4) => (1 1/2 1/4 1/8)
;; (take (partial-sums (echoes 1 1/2)) 4) => (1 3/2 7/4 15/8)
;; (until-quiet (echoes 1 1/2) 1/100) => 7
